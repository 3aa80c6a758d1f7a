"""Full names of the event schemas: defined once, used by producers and consumers."""

from typing import Final

AGENT_REQUEST: Final = "clawstream.AgentRequest"
STEP_COMMAND: Final = "clawstream.StepCommand"
STEP_RESULT: Final = "clawstream.StepResult"
AGENT_EVENT: Final = "clawstream.AgentEvent"
AGENT_ANSWER: Final = "clawstream.AgentAnswer"
DEAD_LETTER: Final = "clawstream.DeadLetter"
CONTROL_FLAG: Final = "clawstream.ControlFlag"
WAKEUP: Final = "clawstream.Wakeup"
CANCEL: Final = "clawstream.Cancel"
STEP_DELTA: Final = "clawstream.StepDelta"

EVENT_SCHEMAS: Final = (
    AGENT_REQUEST,
    STEP_COMMAND,
    STEP_RESULT,
    AGENT_EVENT,
    AGENT_ANSWER,
    DEAD_LETTER,
    CONTROL_FLAG,
    WAKEUP,
    CANCEL,
    STEP_DELTA,
)
