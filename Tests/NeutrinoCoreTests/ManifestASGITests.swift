import Testing

@testable import NeutrinoCore

/// The manifest's `x-neutrino-asgi` (an ASGI app mounted with `App.mount`).
struct ManifestASGITests {
    static func document(asgi: String, paths: String = "") -> [UInt8] {
        Array(#"{"openapi":"3.1.0","info":{"title":"shop","version":"1"},"paths":{\#(paths)},"x-neutrino-asgi":\#(asgi)}"#.utf8)
    }

    static let syncTask = #""/api/echo":{"post":{"x-neutrino-mode":"sync","x-neutrino-pool":"fast","x-neutrino-timeout":5000}}"#
    static let asyncTask = #""/api/slow":{"post":{"x-neutrino-mode":"async","x-neutrino-pool":"web","x-neutrino-timeout":5000}}"#

    @Test func readsTheMount() throws {
        let m = try Manifest(
            json: Self.document(
                asgi:
                    #"{"pool":"web","app":"fastapi.applications.FastAPI","routes":[{"path":"/items/{id}","methods":["GET"],"kind":"route"},{"path":"/static","kind":"mount"}]}"#,
                paths: Self.syncTask))
        let asgi = try #require(m.asgi)
        #expect(asgi.pool == "web" && asgi.app == "fastapi.applications.FastAPI")
        #expect(asgi.routes.map(\.path) == ["/items/{id}", "/static"])
        #expect(asgi.routes[0].methods == ["GET"] && asgi.routes[1].methods.isEmpty && asgi.routes[1].kind == "mount")
        // The app's pool is a sync pool of the manifest, so the gateway makes a WorkerPool for it.
        #expect(m.pools == ["fast": .sync, "web": .sync])
    }

    @Test func anAppAloneIsAManifest() throws {
        let m = try Manifest(json: Self.document(asgi: #"{"pool":"fast","routes":[]}"#))
        #expect(m.tasks.isEmpty && m.asgi?.pool == "fast")
    }

    @Test func refusesAQueuedPoolOrABadName() {
        #expect(throws: Manifest.LoadError.self) { try Manifest(json: Self.document(asgi: #"{"pool":"web"}"#, paths: Self.asyncTask)) }
        #expect(throws: Manifest.LoadError.self) { try Manifest(json: Self.document(asgi: #"{"pool":"Web!"}"#, paths: Self.syncTask)) }
    }

    @Test func noMountNoTasksIsRefused() {
        #expect(throws: Manifest.LoadError.self) {
            try Manifest(json: Array(#"{"openapi":"3.1.0","info":{"title":"x","version":"1"},"paths":{}}"#.utf8))
        }
    }
}
