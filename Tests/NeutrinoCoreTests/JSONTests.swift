import Testing

@testable import NeutrinoCore

struct JSONTests {
    @Test func parsesAndWritesBack() throws {
        let text = #"{"a":[1,2.5,-3e2,true,false,null],"b":{"c":"d\n\"é\" \ud83d\ude00"},"n":12345678901234567890}"#
        let value = try JSONParser.parse(text)
        #expect(value["a"]?.arrayValue?.count == 6)
        #expect(value["b"]?["c"]?.stringValue == "d\n\"é\" 😀")
        // Numbers keep their text: a 20-digit integer is not rounded through Double.
        #expect(value.jsonText.contains("12345678901234567890"))
        #expect(try JSONParser.parse(value.jsonText) == value)
    }

    @Test(arguments: ["", "{", "[1,]", "{\"a\":1,}", "01", "1.", "\"\\x\"", "tru", "{\"a\" 1}", "[1] 2", "\"\u{01}\"", "\"\\ud800\""])
    func rejectsInvalidDocuments(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(text) }
    }

    @Test func rejectsDeepNesting() {
        let deep = String(repeating: "[", count: 1000) + String(repeating: "]", count: 1000)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(deep) }
    }

    @Test func writerEscapes() throws {
        var w = JSONWriter()
        w.beginObject()
        w.key("s"); w.string("a\"b\\c\u{1}\t")
        w.key("d"); w.double(1.5)
        w.key("i"); w.int(3)
        w.key("raw"); w.raw(#"{"x":[1]}"#)
        w.endObject()
        #expect(w.text == #"{"s":"a\"b\\c\u0001\t","d":1.5,"i":3,"raw":{"x":[1]}}"#)
        #expect(try JSONParser.parse(w.bytes)["s"]?.stringValue == "a\"b\\c\u{1}\t")
    }

    @Test func integerKinds() throws {
        #expect(try JSONParser.parse("3").schemaTypeName == "integer")
        #expect(try JSONParser.parse("3.0").schemaTypeName == "integer")
        #expect(try JSONParser.parse("3.5").schemaTypeName == "number")
    }
}
