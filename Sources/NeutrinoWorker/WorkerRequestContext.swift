import Hummingbird
import NIOCore

/// A worker's request context: Hummingbird's core storage plus the request's connection, to look up whether its
/// client is still there (`ConnectionPresences`).
struct WorkerRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let connection: ObjectIdentifier

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        connection = ObjectIdentifier(source.channel)
    }
}
