/// How many replicas a pool should run: one implementation, used by the gateway's `/pools` (which the local
/// autoscaler of `neutrino up` applies) and mirrored by the Kubernetes autoscalers (KEDA computes the same
/// `ceil(backlog / target)` for queued pools, the HPA the same utilisation rule for the fast pool).
public struct ScalingPolicy: Sendable, Hashable {
    public enum Signal: String, Sendable, Hashable {
        /// Queued pools: backlog (pending + in flight, as KEDA's nats-jetstream scaler counts it) per replica.
        case backlog
        /// Sync pools: busy Python threads (and calls waiting in a gateway for room) over all threads, against a
        /// target utilisation.
        case utilisation
    }

    public var signal: Signal
    public var min: Int
    public var max: Int
    /// Tasks of backlog per replica (`backlog`) or the utilisation to hold (`utilisation`, 0...1).
    public var target: Double
    /// Scale-down waits until every recommendation of this window was at or below the new count.
    public var downWindow: Duration

    public init(signal: Signal, min: Int, max: Int, target: Double, downWindow: Duration) {
        self.signal = signal
        self.min = min
        self.max = Swift.max(min, max)
        self.target = target
        self.downWindow = downWindow
    }

    public var scaleToZero: Bool { min == 0 }

    /// The defaults per execution mode: gpu pools may idle at zero; the others keep one replica warm.
    public static func defaults(for mode: ExecutionMode) -> ScalingPolicy {
        switch mode {
        case .sync: ScalingPolicy(signal: .utilisation, min: 1, max: 4, target: 0.7, downWindow: .seconds(60))
        case .async: ScalingPolicy(signal: .backlog, min: 1, max: 4, target: 10, downWindow: .seconds(60))
        case .gpu: ScalingPolicy(signal: .backlog, min: 0, max: 1, target: 1, downWindow: .seconds(60))
        }
    }

    /// Parses `MIN:MAX[:TARGET[:DOWN_WINDOW_SECONDS]]` over the defaults of `mode`.
    public static func parse(_ text: String, mode: ExecutionMode) throws(ScalingPolicyError) -> ScalingPolicy {
        var policy = defaults(for: mode)
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard (2...4).contains(parts.count), let lo = Int(parts[0]), let hi = Int(parts[1]), lo >= 0, hi >= lo, hi <= 10_000 else {
            throw ScalingPolicyError(message: "'\(text)' is not MIN:MAX[:TARGET[:DOWN_WINDOW_SECONDS]] with 0 <= MIN <= MAX")
        }
        if mode == .sync && lo == 0 {
            throw ScalingPolicyError(message: "a sync pool cannot scale to zero: its callers wait for an answer (MIN >= 1)")
        }
        policy.min = lo
        policy.max = hi
        if parts.count > 2 {
            guard let t = Double(parts[2]), t > 0, t.isFinite, policy.signal == .backlog || t <= 1 else {
                throw ScalingPolicyError(message: "TARGET in '\(text)' must be > 0 (and <= 1, a utilisation, for a sync pool)")
            }
            policy.target = t
        }
        if parts.count > 3 {
            guard let w = Double(parts[3]), w >= 0, w <= 86_400 else {
                throw ScalingPolicyError(message: "DOWN_WINDOW_SECONDS in '\(text)' must be 0...86400")
            }
            policy.downWindow = .milliseconds(Int64(w * 1000))
        }
        return policy
    }

    /// What the pool is doing now.
    public struct Inputs: Sendable, Hashable {
        public var pending: Int
        public var inFlight: Int
        public var replicas: Int
        public var busySlots: Int
        public var totalSlots: Int
        /// Sync calls waiting in the gateway for room because every slot was busy: demand past 100 % utilisation.
        public var waiting: Int

        public init(
            pending: Int = 0, inFlight: Int = 0, replicas: Int = 0, busySlots: Int = 0, totalSlots: Int = 0, waiting: Int = 0
        ) {
            self.pending = pending
            self.inFlight = inFlight
            self.replicas = replicas
            self.busySlots = busySlots
            self.totalSlots = totalSlots
            self.waiting = waiting
        }
    }

    /// The replica count this policy wants for `inputs` right now, and why, in words.
    public func recommend(_ inputs: Inputs) -> (replicas: Int, reason: String) {
        switch signal {
        case .backlog:
            let backlog = inputs.pending + inputs.inFlight
            let raw = Int((Double(backlog) / target).rounded(.up))
            let wanted = clamp(raw)
            return (
                wanted,
                "backlog \(backlog) (pending \(inputs.pending) + in flight \(inputs.inFlight)) / target \(JSONWriter.format(target)) → \(raw)\(bounds(raw, wanted))"
            )
        case .utilisation:
            guard inputs.totalSlots > 0, inputs.replicas > 0 else {
                return (clamp(Swift.max(inputs.replicas, min)), "no worker reports its load; keeping \(clamp(Swift.max(inputs.replicas, min)))")
            }
            // Calls waiting for room count as demand on top of the busy slots (a queue's lag, as KEDA counts it), so
            // a pool whose line grows scales by the line's length, not by one step per refresh. Saturating: the
            // figures come from heartbeats and the gateway.
            let demand = Double(inputs.busySlots) + Double(Swift.max(0, inputs.waiting))
            let utilisation = demand / Double(inputs.totalSlots)
            let wantedReplicas = (Double(inputs.replicas) * utilisation / target).rounded(.up)
            let raw = wantedReplicas >= Double(Int.max / 2) ? Int.max / 2 : Int(wantedReplicas)
            let wanted = clamp(raw)
            let line = inputs.waiting > 0 ? " + \(inputs.waiting) calls waiting for room" : ""
            let percent = Int(Swift.min(utilisation * 100, 1e12).rounded())
            return (
                wanted,
                "busy \(inputs.busySlots)/\(inputs.totalSlots) threads\(line) = \(percent) % on \(inputs.replicas) replicas, target \(Int((target * 100).rounded())) % → \(raw)\(bounds(raw, wanted))"
            )
        }
    }

    private func clamp(_ n: Int) -> Int { Swift.min(max, Swift.max(min, n)) }

    private func bounds(_ raw: Int, _ wanted: Int) -> String {
        raw == wanted ? "" : " (bounded to \(min)...\(max))"
    }
}

public struct ScalingPolicyError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// Turns a stream of recommendations into the replica count to run: up at once, down only once every
/// recommendation of the stabilisation window allows it (the rule the Kubernetes HPA applies), and keeps the
/// changes it made, with their reasons.
public struct ScalingRecommender: Sendable {
    public struct Decision: Sendable, Hashable {
        public var at: Timestamp
        public var from: Int
        public var to: Int
        public var reason: String
    }

    public let policy: ScalingPolicy
    public private(set) var desired: Int?
    public private(set) var decisions: [Decision] = []
    private var history: [(at: Int64, replicas: Int)] = []
    public static let keptDecisions = 20

    public init(policy: ScalingPolicy) { self.policy = policy }

    /// Feeds one recommendation observed at `now` and returns the replica count to run.
    @discardableResult
    public mutating func observe(_ recommended: Int, reason: String, now: Timestamp) -> Int {
        let windowMs = policy.downWindow.wholeMilliseconds
        history.append((now.millis, recommended))
        history.removeAll { $0.at < now.millis - windowMs }
        let stabilised = history.map(\.replicas).max() ?? recommended
        let previous = desired
        let next: Int
        if let previous {
            next = recommended >= previous ? recommended : Swift.min(previous, stabilised)
        } else {
            next = recommended
        }
        desired = next
        if let previous, previous != next {
            let why = next > previous ? reason : "\(reason); lower for \(JSONWriter.format(Double(windowMs) / 1000)) s"
            decisions.append(Decision(at: now, from: previous, to: next, reason: why))
            if decisions.count > Self.keptDecisions { decisions.removeFirst(decisions.count - Self.keptDecisions) }
        }
        return next
    }
}
