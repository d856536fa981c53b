import Testing

@testable import NeutrinoCore

/// What the gateway accepts and what it forwards to Python (README "Input semantics and limits").
struct InputSemanticsTests {
    @Test(arguments: [
        ("0", JSONNumber.Kind.integer(0)), ("-0", .integer(0)), ("-0.0", .integer(0)), ("0e-5", .integer(0)),
        ("1000", .integer(1000)), ("1e3", .integer(1000)), ("1E+3", .integer(1000)), ("1000.0", .integer(1000)),
        ("10000e-1", .integer(1000)), ("1.5e3", .integer(1500)), ("-12.50e1", .integer(-125)),
        ("9223372036854775807", .integer(Int64.max)), ("-9223372036854775808", .integer(Int64.min)),
        ("9223372036854775808", .integerOutOfRange), ("-9223372036854775809", .integerOutOfRange),
        ("1e19", .integerOutOfRange), ("1e400", .integerOutOfRange), ("1e999999999999999999999", .integerOutOfRange),
        ("1.5", .fractional), ("1e-1", .fractional), ("1e-400", .fractional), ("9007199254740993.5", .fractional),
        ("1e-999999999999999999999", .fractional),
        ("", .invalid), ("-", .invalid), ("1.", .invalid), ("1e", .invalid), ("abc", .invalid), ("1x", .invalid),
    ])
    func classifiesNumbersExactly(_ text: String, _ kind: JSONNumber.Kind) {
        #expect(JSONNumber.classify(text) == kind, "\(text)")
    }

    @Test func integralNumbersForIntegerParametersAreForwardedAsIntegers() throws {
        let m = try Manifest(json: Array(ManifestTests.document.utf8))
        let task = try #require(m.tasks["echo"])
        let c = m.conform(args: try JSONParser.parse(#"{"x":1e3,"opt":2.0,"m":{"k":5.0e0},"p":{"x":1.0,"y":2e0}}"#), for: task)
        #expect(c.issues.isEmpty, "\(c.issues.items)")
        // integer → rewritten; number (opt, p.x, p.y) → kept as written.
        #expect(c.value.jsonText == #"{"m":{"k":5},"opt":2.0,"p":{"x":1.0,"y":2e0},"x":1000}"#)
        // An exactly representable huge float for `integer` is still too big.
        let big = m.conform(args: try JSONParser.parse(#"{"x":1e19}"#), for: task)
        #expect(big.issues.items.map(\.path) == ["args.x"])
        #expect(big.issues.items.first?.message.contains("64-bit range") == true)
    }

    @Test(arguments: [
        (#"{"x":1.5}"#, "args.x", "expected integer, got number"),
        (#"{"x":99999999999999999999}"#, "args.x", "outside the 64-bit range"),
        (#"{"x":1,"opt":1e400}"#, "args.opt", "too large for a 64-bit float"),
        (#"{"x":1,"opt":-1e309}"#, "args.opt", "too large for a 64-bit float"),
        (#"{"x":1,"m":{"k":123456789012345678901234567890}}"#, "args.m.k", "outside the 64-bit range"),
    ])
    func numbersPythonCannotReceiveAsWrittenAreRefused(_ args: String, _ path: String, _ message: String) throws {
        let m = try Manifest(json: Array(ManifestTests.document.utf8))
        let c = m.conform(args: try JSONParser.parse(args), for: try #require(m.tasks["echo"]))
        #expect(c.issues.count == 1, "\(c.issues.items)")
        #expect(c.issues.items.first?.path == path)
        #expect(c.issues.items.first?.message.contains(message) == true, "\(c.issues.items)")
    }

    @Test func untypedPositionsAreCheckedToo() throws {
        // A schema that allows anything still refuses a 5,000-digit integer and an infinite float, with the path.
        let schema = try ArgumentSchema(.bool(true))
        let digits = String(repeating: "7", count: 5000)
        let c = schema.conform(try JSONParser.parse(#"{"a":[1,\#(digits)],"b":{"c":1e999}}"#))
        #expect(c.issues.items.map(\.path) == ["args.a[1]", "args.b.c"])
        // The number is abbreviated in the message.
        #expect(c.issues.items[0].message.utf8.count < 300)
    }

    @Test func issuesAreCappedButCounted() throws {
        let m = try Manifest(json: Array(ManifestTests.document.utf8))
        var text = #"{"x":1"#
        for i in 0..<50_000 { text += #","k\#(i)":1"# }
        text += "}"
        let c = m.conform(args: try JSONParser.parse(text), for: try #require(m.tasks["echo"]), limit: 20)
        #expect(c.issues.items.count == 20)
        #expect(c.issues.count == 50_000)
    }

    @Test func longKeysAreAbbreviatedInPaths() throws {
        let m = try Manifest(json: Array(ManifestTests.document.utf8))
        let key = String(repeating: "k", count: 10_000)
        let c = m.conform(args: try JSONParser.parse(#"{"x":1,"\#(key)":1}"#), for: try #require(m.tasks["echo"]))
        let issue = try #require(c.issues.items.first)
        #expect(issue.path.utf8.count < 120)
        #expect(issue.message.utf8.count < 200)
    }

    @Test(
        arguments: [
            [0x22, 0xFF, 0x22], [0x22, 0xC0, 0xAF, 0x22], [0x22, 0xE0, 0x80, 0xAF, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22],
            [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22], [0x22, 0xC3, 0x22], [0x22, 0xE2, 0x82, 0x22], [0x22, 0x80, 0x22],
            [0x7B, 0x22, 0xFE, 0x22, 0x3A, 0x31, 0x7D], [0x22, 0x5C, 0x6E, 0xF8, 0x88, 0x80, 0x80, 0x80, 0x22],
        ] as [[UInt8]])
    func invalidUTF8IsRefusedNotReplaced(_ bytes: [UInt8]) {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(bytes) }
    }

    @Test func validUTF8IsKept() throws {
        let text = "\"é€😀\\n😀\""
        #expect(try JSONParser.parse(Array(text.utf8)).stringValue == "é€😀\n😀")
    }

    @Test func shortEscapesAreWritten() {
        var w = JSONWriter()
        w.string("\u{8}\u{C}\n\r\t\u{0}\u{1F}")
        #expect(w.text == #""\b\f\n\r\t\u0000\u001f""#)
    }
}

struct SHA256Tests {
    @Test(arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    ])
    func knownDigests(_ input: String, _ hex: String) {
        #expect(SHA256.hex(Array(input.utf8)) == hex)
    }

    @Test func longInput() {
        // One million 'a's (FIPS 180-2, appendix B.3).
        #expect(SHA256.hex([UInt8](repeating: 0x61, count: 1_000_000)) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}
