import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.Map;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

/**
 * Avro single-object encoding done by Apache Avro's own Java classes, so clawstream's codec
 * is checked against the reference implementation, not against itself.
 *
 * java -cp 'AVRO_LIBS/*' SingleObject.java decode|encode SCHEMAS_FILE
 *
 * SCHEMAS_FILE: one line per schema, "full name TAB schema JSON" (references expanded).
 * decode: stdin "name TAB hex of a message" -> stdout the record as JSON, or "ERROR message".
 * encode: stdin "name TAB record in Avro's JSON encoding" -> stdout the message as hex.
 */
public class SingleObject {
    public static void main(String[] args) throws Exception {
        String mode = args[0];
        Map<String, Schema> schemas = new HashMap<>();
        for (String line : Files.readAllLines(Path.of(args[1]), StandardCharsets.UTF_8)) {
            String[] parts = line.split("\t", 2);
            schemas.put(parts[0], new Schema.Parser().parse(parts[1]));
        }
        HexFormat hex = HexFormat.of();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line = in.readLine(); line != null; line = in.readLine()) {
            String[] parts = line.split("\t", 2);
            Schema schema = schemas.get(parts[0]);
            try {
                if (mode.equals("decode")) {
                    BinaryMessageDecoder<GenericRecord> decoder =
                        new BinaryMessageDecoder<>(GenericData.get(), schema);
                    System.out.println(decoder.decode(hex.parseHex(parts[1])).toString());
                } else {
                    GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema);
                    GenericRecord record =
                        reader.read(null, DecoderFactory.get().jsonDecoder(schema, parts[1]));
                    BinaryMessageEncoder<GenericRecord> encoder =
                        new BinaryMessageEncoder<>(GenericData.get(), schema);
                    ByteArrayOutputStream out = new ByteArrayOutputStream();
                    encoder.encode(record, out);
                    System.out.println(hex.formatHex(out.toByteArray()));
                }
            } catch (Exception e) {
                System.out.println("ERROR " + e.getClass().getSimpleName() + ": " + e.getMessage());
            }
        }
    }
}
