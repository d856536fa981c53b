import HTTPTypes
import Testing

@testable import NeutrinoGateway

/// With tracing on, only the requests that act on tasks get a request span (each would otherwise be a trace of its own).
struct TracedRoutesTests {
    @Test func requestsActingOnTasksAreTraced() {
        typealias M = TracedRoutesMiddleware<GatewayRequestContext>
        #expect(M.isTraced(method: .post, path: "/api/echo"))
        #expect(M.isTraced(method: .post, path: "/tasks/01a2/retry"))
        #expect(M.isTraced(method: .delete, path: "/tasks/01a2"))
        for (method, path) in [
            (HTTPRequest.Method.get, "/tasks/01a2"), (.get, "/tasks"), (.get, "/events"), (.get, "/healthz"),
            (.get, "/metrics"), (.get, "/pools"), (.get, "/"), (.post, "/auth/session"), (.delete, "/auth/session"),
        ] {
            #expect(!M.isTraced(method: method, path: path), "\(method) \(path)")
        }
    }
}
