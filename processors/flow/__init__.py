"""Flow control (issue 5): lanes, entrance limits, the tokens/s limiter, backpressure,
budgets, context recall and the degradation flags.

Each concern is its own module with no Faust import, so the rules are unit-testable and the
shared processor files only call into them: ``buckets`` (atomic Redis token buckets),
``flags`` (the compacted control topic), ``limits`` (entrance and tenant budgets),
``pools`` (task class -> model pool, kill switches, degrade), ``budgets`` (per conversation),
``scheduler`` (lane priority, tenant round-robin), ``dispatch`` (the inference dispatcher
loop: admission under tokens/s, pause/resume of partitions), ``recall`` (older exchanges).
"""
