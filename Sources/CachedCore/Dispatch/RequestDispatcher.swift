import CachedProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Runs one request: validates its params, talks to the store, counts it.
public final class RequestDispatcher: Sendable {
    public let store: any CacheStore
    public let stats: Stats
    private let configuration: NIOLockedValueBox<DaemonConfiguration>
    private let startTime = NIODeadline.now()
    private let logger: Logger

    public init(store: any CacheStore, configuration: DaemonConfiguration, stats: Stats = Stats(), logger: Logger) {
        self.store = store
        self.stats = stats
        self.configuration = NIOLockedValueBox(configuration)
        self.logger = logger
    }

    /// The configuration in force (it can be replaced by a reload).
    public var currentConfiguration: DaemonConfiguration {
        configuration.withLockedValue { $0 }
    }

    /// Replaces the live configuration (TTLs and key settings take effect for the next request).
    public func updateConfiguration(_ new: DaemonConfiguration) {
        configuration.withLockedValue { $0 = new }
    }

    /// Runs a request. The future fails only with ``CachedError``.
    public func dispatch(_ request: JSONRPCRequest, on eventLoop: any EventLoop) -> EventLoopFuture<MethodResult> {
        guard let method = CachedMethod(rawValue: request.method) else {
            stats.record(method: request.method, key: nil, outcome: .error)
            return eventLoop.makeFailedFuture(
                CachedError(.methodNotFound, "Method not found: \(request.method)",
                            data: .object(["methods": .array(CachedMethod.allCases.map { .string($0.rawValue) })])))
        }
        do {
            switch method {
            case .get:
                let params = try GetParams(request.params)
                let key = params.address.key
                return store.get(params.address, on: eventLoop)
                    .map { value in MethodResult.get(hit: value != nil, value: value) }
                    .counted(self, method: "get", key: key) { result in
                        if case .get(let hit, _) = result { return hit ? .hit : .miss }
                        return .ok
                    }
            case .set:
                let params = try SetParams(request.params)
                guard let value = params.value else {
                    throw CachedError(.invalidParams, "set: missing parameter \"value\" (key \(params.address.key) has no handler to fill it)")
                }
                let ttl = params.ttl ?? currentConfiguration.key(params.address.key).ttl
                return store.set(params.address, value: value, ttl: ttl, on: eventLoop)
                    .map { MethodResult.stored(true) }
                    .counted(self, method: "set", key: params.address.key)
            case .delete:
                let params = try DeleteParams(request.params)
                return store.delete(params.address, on: eventLoop)
                    .map { MethodResult.deleted($0) }
                    .counted(self, method: "delete", key: params.address.key)
            case .deleteHash:
                let params = try DeleteHashParams(request.params)
                return store.deleteHash(params.hash, on: eventLoop)
                    .map { MethodResult.deleted($0) }
                    .counted(self, method: "deleteHash", key: params.hash.hashKey)
            case .ping:
                _ = try EmptyParams(request.params, method: "ping")
                stats.record(method: "ping", key: nil, outcome: .ok)
                return eventLoop.makeSucceededFuture(.pong)
            case .stats:
                _ = try EmptyParams(request.params, method: "stats")
                stats.record(method: "stats", key: nil, outcome: .ok)
                let uptime = Double((NIODeadline.now() - startTime).nanoseconds) / 1e9
                return eventLoop.makeSucceededFuture(.json(stats.snapshot(store: store.status(), uptimeSeconds: uptime)))
            }
        } catch let error as CachedError {
            stats.record(method: request.method, key: nil, outcome: .error)
            return eventLoop.makeFailedFuture(error)
        } catch {
            stats.record(method: request.method, key: nil, outcome: .error)
            logger.error("internal error", metadata: ["error": "\(error)"])
            return eventLoop.makeFailedFuture(CachedError(.internalError, "Internal error"))
        }
    }
}

extension EventLoopFuture where Value == MethodResult {
    /// Counts the request's outcome, and makes sure the future fails only with ``CachedError``.
    func counted(
        _ dispatcher: RequestDispatcher, method: String, key: String,
        outcome: @escaping @Sendable (MethodResult) -> Stats.Outcome = { _ in .ok }
    ) -> EventLoopFuture<MethodResult> {
        let stats = dispatcher.stats
        return self.map { result in
            stats.record(method: method, key: key, outcome: outcome(result))
            return result
        }.flatMapErrorThrowing { error in
            stats.record(method: method, key: key, outcome: .error)
            if let error = error as? CachedError { throw error }
            throw CachedError(.internalError, "Internal error: \(error)")
        }
    }
}
