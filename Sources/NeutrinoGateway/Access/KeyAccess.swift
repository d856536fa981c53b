import HTTPTypes
import Hummingbird
import HummingbirdAuth
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoObservability

extension KeyStore {
    /// The key a bearer token names, or the 401 its request gets (`APIKeyAuthenticator`, and the sync calls the
    /// gateway answers outside the router).
    func authenticate(_ token: String) -> Result<APIKey, AccessRejection> { Self.admitted(verify(token)) }

    static func admitted(_ verdict: Verdict) -> Result<APIKey, AccessRejection> {
        switch verdict {
        case .valid(let key): .success(key)
        case .unknown: .failure(.unauthorized("unknown_key", "the API key is not valid"))
        case .revoked(let id): .failure(.unauthorized("revoked_key", "API key \(id) is revoked"))
        }
    }
}

/// What an authenticated key may do, as plain functions: `AccessPolicyMiddleware` runs them for the routes, and the
/// gateway's `CallHandler` for the sync calls it answers outside the router, so both paths refuse and count alike.
struct KeyPolicy: Sendable {
    let limits: KeyLimits
    let manifest: Manifest

    /// Why `key` may not use a route that needs `scope` (and, for `POST /api/<task>`, submit `task`); nil if it may.
    func refusal(of key: APIKey, scope: APIScope, task: String?) -> AccessRejection? {
        guard key.allows(scope) else {
            return .forbidden("scope", "API key \(key.id) lacks the \(scope.rawValue) scope", scope: scope)
        }
        guard let task else { return nil }
        if let tasks = key.tasks, !tasks.contains(task) {
            return .forbidden("task_not_allowed", "API key \(key.id) may not submit '\(task)'")
        }
        if let pools = key.pools, let pool = manifest.tasks[task]?.spec.pool, !pools.contains(pool) {
            return .forbidden("pool_not_allowed", "API key \(key.id) may not submit to pool '\(pool)'")
        }
        return nil
    }

    /// The per-key rate and in-flight quota, then `route` with the key's id in `RequestIdentity.keyID`; the answer is
    /// counted per key and a reserved in-flight slot settled. Throws the 429 of a key over a limit, or what `route`
    /// throws.
    func serve(key: APIKey, createsTask: Bool, _ route: () async throws -> Response) async throws -> Response {
        if case .overRate(let retryAfter, let rate, let burst) = limits.take(key) {
            throw limited(
                key, "rate", "API key \(key.id) is over its rate of \(rate) requests per second (burst \(Int(burst)))",
                retryAfter: retryAfter, limit: [("rate_per_second", rate), ("burst", burst)])
        }
        if createsTask, case .overInFlight(let limit, let inFlight) = limits.reserve(key) {
            throw limited(
                key, "in_flight", "API key \(key.id) has \(inFlight) tasks queued or running, its limit is \(limit)",
                retryAfter: 1, limit: [("max_in_flight", Double(limit))])
        }
        let response: Response
        do {
            response = try await RequestIdentity.$keyID.withValue(key.id) { try await route() }
        } catch {
            if createsTask { limits.settle(keyID: key.id, acceptedTaskID: nil) }
            count(key, code: (error as? any HTTPResponseError)?.status.code ?? 500)
            throw error
        }
        if createsTask {
            let accepted = response.status == .accepted ? response.headers[NeutrinoHeader.taskID] : nil
            limits.settle(keyID: key.id, acceptedTaskID: accepted)
        }
        count(key, code: response.status.code)
        return response
    }

    private func count(_ key: APIKey, code: Int) {
        MetricHandles.counter(AccessMetrics.requestsByKey, [("key_id", key.id), ("code", String(code))]).increment()
    }

    private func limited(_ key: APIKey, _ kind: String, _ message: String, retryAfter: Int, limit: [(String, Double)]) -> AccessRejection {
        MetricHandles.counter(AccessMetrics.limited, [("key_id", key.id), ("limit", kind)]).increment()
        count(key, code: 429)
        return AccessRejection(
            error: .rateLimited, reason: kind == "rate" ? "rate_limited" : "in_flight_limited", message: message,
            headers: [.retryAfter: String(retryAfter)], limit: limit)
    }
}

/// The API-key checks of a sync call the gateway answers outside the router (`POST /api/<task>` with a bearer key):
/// the same functions, in the same order, as `APIKeyAuthenticator` and `AccessPolicyMiddleware`.
struct CallAccess: Sendable {
    let keys: KeyStore
    let policy: KeyPolicy

    /// The key that may submit `task`, or the refusal the router would answer. The call handler claims only requests
    /// this admits, so a missing, unknown, revoked or insufficient key is refused by the router's middleware (before
    /// the body is read). It runs again once the body has arrived, when the call starts: a key revoked while the body
    /// was on its way is refused then.
    func admittedKey(_ fields: HTTPFields, task: String) -> Result<APIKey, AccessRejection> {
        guard let bearer = fields.bearer else { return .failure(.missingKey(.submit)) }
        return keys.authenticate(bearer.token).flatMap { key in
            policy.refusal(of: key, scope: .submit, task: task).map { .failure($0) } ?? .success(key)
        }
    }

    /// Runs `call` as `key`'s request (rate, in-flight quota, `submitted_by`, per-key count), or answers the refusal.
    func serve(_ fields: HTTPFields, task: String, _ call: () async -> Response) async -> Response {
        switch admittedKey(fields, task: task) {
        case .failure(let rejection):
            return rejection.errorResponse
        case .success(let key):
            do {
                return try await policy.serve(key: key, createsTask: true) { await call() }
            } catch let rejection as AccessRejection {
                return rejection.errorResponse
            } catch {
                return .error(.internalError, "\(error)")
            }
        }
    }
}
