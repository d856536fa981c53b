import Synchronization

/// Task ids cancelled recently (bounded: the oldest are forgotten first).
struct CancelledSet: Sendable {
    private var order: [String] = []
    private var members: Set<String> = []
    static let capacity = 10_000

    mutating func insert(_ id: String) {
        guard members.insert(id).inserted else { return }
        order.append(id)
        if order.count > CancelledSet.capacity {
            members.remove(order.removeFirst())
        }
    }

    func contains(_ id: String) -> Bool { members.contains(id) }
}

/// A `CancelledSet` shared between the cancel listener and the calls it may stop (an HTTP worker is a value type).
final class CancelledTasks: Sendable {
    private let set = Mutex(CancelledSet())

    func insert(_ id: String) { set.withLock { $0.insert(id) } }
    func contains(_ id: String) -> Bool { set.withLock { $0.contains(id) } }
}
