import NeutrinoCore
import Testing

@testable import NeutrinoEvents

struct EventCodecTests {
    @Test func roundTripKeepsEveryFieldExactly() throws {
        let odd = "quote \" backslash \\ slash / newline \n tab \t nul \u{0} bell \u{7} é 漢字 🧪 \u{2028} end"
        let events = [
            TaskEvent(
                taskID: TaskID.make(), kind: .completed, at: Timestamp(millis: 1_732_444_846_123), function: "embed",
                pool: "gpu", mode: .gpu, workerID: odd, attempt: 3, args: #"{ "b" : 1,"a":[1 , 2.50e3] }"#,
                result: "not json at all {", error: #"{"type":"X","message":"\"quoted\"\n"}"#, durationMs: 12.345678901,
                progress: 1.0 / 3.0, detail: odd),
            TaskEvent(taskID: "t", kind: .timedOut, at: Timestamp(millis: 0), function: "f", pool: "p", mode: .sync),
            TaskEvent(
                taskID: "t2", kind: .progress, at: Timestamp(millis: -1), function: "f", pool: "p", mode: .async,
                attempt: 1, durationMs: 1e-7, progress: 0, detail: ""),
            TaskEvent(
                taskID: "t3", kind: .retrying, function: "f", pool: "p", mode: .async, attempt: Int(Int32.max),
                args: "", durationMs: 1e300),
        ]
        for event in events {
            let bytes = EventCodec.encode(event)
            let decoded = try EventCodec.decode(bytes)
            #expect(decoded == event)
            // The body is one JSON object with every contract field.
            let object = try JSONParser.parse(bytes).objectValue ?? [:]
            #expect(
                Set(object.keys) == [
                    "task_id", "event", "at", "function", "pool", "mode", "worker_id", "attempt",
                    "args", "result", "error", "duration_ms", "progress", "detail",
                ])
            #expect(object["at"]?.stringValue == event.at.iso8601)
            #expect(object["event"]?.stringValue == event.kind.rawValue)
        }
    }

    @Test func nonFiniteNumbersAreWrittenAsNull() throws {
        let event = TaskEvent(taskID: "t", kind: .failed, function: "f", pool: "p", mode: .sync, durationMs: .infinity, progress: .nan)
        let decoded = try EventCodec.decode(EventCodec.encode(event))
        #expect(decoded.durationMs == nil)
        #expect(decoded.progress == nil)
    }

    @Test func missingOptionalFieldsDecodeAsAbsent() throws {
        let text = #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu"}"#
        let event = try EventCodec.decode(Array(text.utf8))
        #expect(event.attempt == 0)
        #expect(event.workerID == nil)
        #expect(event.at.iso8601 == "2026-11-24T10:40:46.123Z")
    }

    @Test(arguments: [
        "", " ", "null", "[]", "\"x\"", "{", "{}", "{\"task_id\":\"a\"", "\u{FF}\u{FE}",
        #"{"task_id":"","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu"}"#,
        #"{"task_id":1,"event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu"}"#,
        #"{"task_id":"a","event":"exploded","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu"}"#,
        #"{"task_id":"a","event":"running","at":"yesterday","function":"f","pool":"p","mode":"gpu"}"#,
        #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"tpu"}"#,
        #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","pool":"p","mode":"gpu"}"#,
        #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu","attempt":"1"}"#,
        #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu","attempt":1.5}"#,
        #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu","attempt":99999999999999999999999}"#,
        #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu","duration_ms":"5"}"#,
        #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu","duration_ms":1e999}"#,
        #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu","result":{"x":1}}"#,
        #"{"task_id":"a","event":"running","at":"2026-11-24T10:40:46.123Z","function":"f","pool":"p","mode":"gpu"} trailing"#,
        String(repeating: "[", count: 10_000),
    ])
    func malformedInputIsRejectedWithAnError(_ text: String) {
        #expect(throws: EventDecodingError.self) { try EventCodec.decode(Array(text.utf8)) }
    }

    @Test func invalidUTF8BytesNeverCrash() {
        let bytes: [UInt8] = Array(#"{"task_id":""#.utf8) + [0xFF, 0xC3] + Array(#"","event":"x"}"#.utf8)
        #expect(throws: EventDecodingError.self) { try EventCodec.decode(bytes) }
    }

    @Test func layoutNamesSubjectsConsumersAndMessageIDs() {
        #expect(EventStreamLayout.subject(pool: "gpu-a100") == "neutrino.events.gpu-a100")
        #expect(EventStreamLayout.subject(pool: "a.b *>") == "neutrino.events.a_b___")
        #expect(EventStreamLayout.subject(pool: "") == "neutrino.events._")
        #expect(EventStreamLayout.consumer(id: "gw.1") == "events_gw_1")
        let running = TaskEvent(taskID: "abc", kind: .timedOut, function: "f", pool: "p", mode: .gpu, attempt: 2)
        #expect(EventStreamLayout.messageID(for: running, origin: .worker("w.1")) == "abc:timed_out:2:w-w_1")
        #expect(EventStreamLayout.messageID(for: running, origin: .gateway("w.1")) == "abc:timed_out:2:g-w_1")
        #expect(EventStreamLayout.messageID(for: running, origin: .worker("gw\r\nX: y")) == "abc:timed_out:2:w-gw__X__y")
        var progress = running
        progress.kind = .progress
        #expect(EventStreamLayout.messageID(for: progress, origin: .gateway("gw")) == nil)
    }
}

extension EventCodecTests {
    /// The submitting key's id travels with a queued event (the gateway's own events, --events-via-nats).
    @Test func submittedByRoundTrips() throws {
        var event = TaskEvent(taskID: TaskID.make(), kind: .queued, function: "f", pool: "async", mode: .async)
        event.submittedBy = "3f9c0e1a2b4d5e6f"
        let bytes = EventCodec.encode(event)
        #expect(try EventCodec.decode(bytes) == event)
        #expect(try JSONParser.parse(bytes).objectValue?["submitted_by"]?.stringValue == "3f9c0e1a2b4d5e6f")
    }

    /// The trace id travels with every event that has one (a worker's events in --task-log nats mode); a value that
    /// is not a trace id is refused, not stored.
    @Test func traceIDRoundTrips() throws {
        var event = TaskEvent(taskID: TaskID.make(), kind: .running, function: "f", pool: "async", mode: .async, workerID: "w", attempt: 1)
        event.traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
        let bytes = EventCodec.encode(event)
        #expect(try EventCodec.decode(bytes) == event)
        #expect(try JSONParser.parse(bytes).objectValue?["trace_id"]?.stringValue == "4bf92f3577b34da6a3ce929d0e0e4736")
        let plain = TaskEvent(taskID: TaskID.make(), kind: .queued, function: "f", pool: "async", mode: .async)
        #expect(try JSONParser.parse(EventCodec.encode(plain)).objectValue?["trace_id"] == nil)
        for bad in ["4BF92F3577B34DA6A3CE929D0E0E4736", "00000000000000000000000000000000", "abc", "<script>"] {
            var text = String(decoding: bytes, as: UTF8.self)
            text = text.replacing("4bf92f3577b34da6a3ce929d0e0e4736", with: bad)
            #expect(throws: EventDecodingError.self) { try EventCodec.decode(Array(text.utf8)) }
        }
    }
}
