import Testing

@testable import NeutrinoCore

struct ManifestTests {
    static let document = #"""
        {"openapi":"3.1.0","info":{"title":"demo","version":"1"},"x-neutrino-app":"demo",
         "paths":{
          "/api/echo":{"post":{"x-neutrino-mode":"sync","x-neutrino-pool":"fast","x-neutrino-timeout":5000,"x-neutrino-retries":0,
            "requestBody":{"content":{"application/json":{"schema":{"type":"object","properties":{"args":
              {"type":"object","properties":{"x":{"type":"integer"},"label":{"type":"string","default":""},
                "tags":{"type":"array","items":{"type":"string"}},
                "opt":{"anyOf":[{"type":"number"},{"type":"null"}]},
                "mode":{"enum":["a","b"]},
                "p":{"$ref":"#/components/schemas/Point"},
                "m":{"type":"object","additionalProperties":{"type":"integer"}}},
               "required":["x"],"additionalProperties":false}}}}}}}},
          "/api/report":{"post":{"x-neutrino-mode":"async","x-neutrino-pool":"async","x-neutrino-timeout":300000,"x-neutrino-retries":3}}
         },
         "components":{"schemas":{"Point":{"type":"object","properties":{"x":{"type":"number"},"y":{"type":"number"}},"required":["x","y"],"additionalProperties":false}}}}
        """#

    @Test func readsRoutingFacts() throws {
        let m = try Manifest(json: Array(Self.document.utf8))
        #expect(m.appName == "demo")
        #expect(m.tasks["echo"]?.spec == TaskSpec(name: "echo", mode: .sync, pool: "fast", timeoutMs: 5000, retries: 0))
        #expect(m.tasks["report"]?.spec == TaskSpec(name: "report", mode: .async, pool: "async", timeoutMs: 300_000, retries: 3))
        #expect(m.pools == ["fast": .sync, "async": .async])
    }

    @Test(arguments: [
        (#"{"x":1}"#, 0), (#"{"x":1,"label":"a","tags":["a"],"opt":null,"mode":"a","p":{"x":1,"y":2.5},"m":{"k":1}}"#, 0),
        (#"{}"#, 1), (#"{"x":"1"}"#, 1), (#"{"x":1.5}"#, 1), (#"{"x":1,"zzz":1}"#, 1), (#"{"x":1,"tags":[1,"a",2]}"#, 2),
        (#"{"x":1,"opt":"no"}"#, 1), (#"{"x":1,"mode":"c"}"#, 1), (#"{"x":1,"p":{"x":1}}"#, 1), (#"{"x":1,"m":{"k":"v"}}"#, 1),
        (#"[1]"#, 1),
    ])
    func validatesArguments(_ args: String, expectedIssues: Int) throws {
        let m = try Manifest(json: Array(Self.document.utf8))
        let task = try #require(m.tasks["echo"])
        let issues = m.validate(args: try JSONParser.parse(args), for: task)
        #expect(issues.count == expectedIssues, "\(args): \(issues)")
    }

    @Test func issuesSayWhere() throws {
        let m = try Manifest(json: Array(Self.document.utf8))
        let issues = m.validate(args: try JSONParser.parse(#"{"x":1,"tags":["a",3]}"#), for: try #require(m.tasks["echo"]))
        #expect(issues.map(\.path) == ["args.tags[1]"])
        #expect(issues[0].message == "expected string, got integer")
    }

    /// `x-neutrino-coroutine` says which calls take a worker's threads; a manifest that does not say leaves it unknown.
    @Test func readsWhetherATaskIsACoroutine() throws {
        func kind(_ extra: String) throws -> Bool? {
            let text = #"{"openapi":"3.1.0","paths":{"/api/x":{"post":{"x-neutrino-mode":"sync","x-neutrino-pool":"p","x-neutrino-timeout":1"#
            return try #require(try Manifest(json: Array((text + extra + "}}}}").utf8)).tasks["x"]).spec.coroutine
        }
        #expect(try kind(#","x-neutrino-coroutine":true"#) == true)
        #expect(try kind(#","x-neutrino-coroutine":false"#) == false)
        #expect(try kind("") == nil)
        #expect(try kind(#","x-neutrino-coroutine":null"#) == nil)
    }

    @Test(arguments: [
        #"{"paths":{}}"#,
        #"{"openapi":"3.1.0","paths":{}}"#,
        #"{"openapi":"3.1.0","paths":{"/api/x":{"post":{"x-neutrino-mode":"fast","x-neutrino-pool":"p","x-neutrino-timeout":1}}}}"#,
        #"{"openapi":"3.1.0","paths":{"/api/x":{"post":{"x-neutrino-mode":"sync","x-neutrino-pool":"P!","x-neutrino-timeout":1}}}}"#,
        #"{"openapi":"3.1.0","paths":{"/api/x":{"post":{"x-neutrino-mode":"sync","x-neutrino-pool":"p","x-neutrino-timeout":6000}}}}"#,
        #"{"openapi":"3.1.0","paths":{"/api/Bad":{"post":{"x-neutrino-mode":"sync","x-neutrino-pool":"p","x-neutrino-timeout":1}}}}"#,
        #"{"openapi":"3.1.0","paths":{"/api/x":{"post":{"x-neutrino-mode":"sync","x-neutrino-pool":"p","x-neutrino-timeout":1,"x-neutrino-coroutine":"yes"}}}}"#,
        "not json",
    ])
    func rejectsBadManifests(_ text: String) {
        #expect(throws: Manifest.LoadError.self) { try Manifest(json: Array(text.utf8)) }
    }
}
