import NeutrinoCore
import Testing

@testable import NeutrinoGateway

/// Which routes of a mounted ASGI app Neutrino's routes shadow (reported at the gateway's start-up).
struct ASGIConflictsTests {
    static func conflicts(_ routes: [(String, [String], String)]) -> [String] {
        let mount = Manifest.ASGIMount(
            pool: "fast", app: "app",
            routes: routes.map { Manifest.ASGIMount.Route(path: $0.0, methods: $0.1, kind: $0.2) })
        return ASGIConflicts.find(mount, routes: gatewayRoutes)
    }

    @Test func fastAPIDefaultsAndNeutrinoPathsAreReported() {
        let found = Self.conflicts([
            ("/openapi.json", ["GET", "HEAD"], "route"), ("/healthz", ["GET"], "route"), ("/tasks/{task_id}", ["GET"], "route"),
            ("/api/{name}", ["POST"], "route"),
        ])
        #expect(found.count == 4, "\(found)")
        #expect(found[0] == "GET /openapi.json is shadowed by Neutrino's GET /openapi.json")
        #expect(found[2].contains("GET /tasks/:id"))
        #expect(found[3].contains("POST /api/:task"))
    }

    @Test func otherRoutesAndOtherMethodsAreNot() {
        #expect(
            Self.conflicts([
                ("/", ["GET"], "route"), ("/items/{id}", ["GET"], "route"), ("/app/openapi.json", ["GET"], "route"),
                ("/api/{name}", ["GET"], "route"),  // only POST /api/:task is Neutrino's
                ("/tasks/{id}/notes", ["GET"], "route"),
            ]).isEmpty)
    }

    @Test func catchAllsMountsAndTheDashboard() {
        #expect(Self.conflicts([("/{path:path}", ["GET"], "route")]).count == 1)
        #expect(Self.conflicts([("/api", [], "mount")]).count == 1)  // POST /api/:task is under the mount
        #expect(Self.conflicts([("/static", [], "mount")]).isEmpty)
        #expect(Self.conflicts([("/_neutrino/{file}", ["GET"], "route")]).first?.contains("dashboard") == true)
        #expect(Self.conflicts([("/ws", [], "websocket")]).isEmpty)
    }

    @Test func forwardingRule() {
        let rule = ASGIForwardingRule(mounted: true)
        #expect(rule.forwards("/items/3", endpoint: nil))
        #expect(rule.forwards("/", endpoint: nil))
        #expect(!rule.forwards("/_neutrino/index.html", endpoint: nil))
        #expect(!rule.forwards("/tasks", endpoint: nil))  // a Neutrino path with another method: 405
        #expect(!rule.forwards("/items/3", endpoint: "/items/{id}"))
        #expect(!ASGIForwardingRule.none.forwards("/items/3", endpoint: nil))
        #expect(AccessRequirement.of(method: .get, endpoint: nil, forwarded: true) == .scope(.read))
        #expect(AccessRequirement.of(method: .post, endpoint: nil, forwarded: true) == .scope(.submit))
        #expect(AccessRequirement.of(method: .post, endpoint: nil) == .open)
    }
}
