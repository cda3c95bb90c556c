import CachedProtocol
import NIOCore

/// One method of the client protocol as the dispatcher runs it: its parameters model (which reads and
/// validates `params`, and names what the method takes) and what it does.
///
/// Adding a method is one entry in ``MethodRegistry/all``, a case of `CachedMethod` with its
/// `MethodParameters` type and `MethodResult` answer (in `CachedProtocol`), plus its docs and client calls.
///
/// Every method declares what it needs of the peer (``AccessNeed``, the `[[access]]` rules); the request is
/// checked against the connection's permissions once its params are read, before anything else runs.
struct MethodHandler: Sendable {
    let method: CachedMethod
    private let body: @Sendable (RequestDispatcher, JSONValue?, RequestContext) throws(CachedError) -> EventLoopFuture<MethodResult>
    /// What a request with these params needs (for the tests that try every method).
    let need: @Sendable (JSONValue?) throws(CachedError) -> AccessNeed

    /// - Parameters:
    ///   - access: what the request needs of its peer.
    ///   - run: runs the validated, allowed request; its future fails only with ``CachedError``.
    init<Parameters: MethodParameters>(
        _ parameters: Parameters.Type,
        access: @escaping @Sendable (Parameters) -> AccessNeed,
        run: @escaping @Sendable (RequestDispatcher, Parameters, RequestContext) -> EventLoopFuture<MethodResult>
    ) {
        method = Parameters.method
        let method = Parameters.method.rawValue
        body = { dispatcher, params, context throws(CachedError) in
            let parameters = try Parameters(params)
            if let peer = context.control?.access {
                let need = access(parameters)
                if let refusal = peer.check(need, method: method) {
                    dispatcher.counters(context).record(method: method, key: Self.key(of: need), outcome: .error(refusal.code))
                    return context.eventLoop.makeFailedFuture(refusal)
                }
            }
            return run(dispatcher, parameters, context)
        }
        need = { params throws(CachedError) in access(try Parameters(params)) }
    }

    private static func key(of need: AccessNeed) -> String? {
        switch need {
        case .read(let key), .write(let key): key
        default: nil
        }
    }

    /// Reads the params (a -32602 is thrown), checks the peer's access and runs the request.
    func run(_ dispatcher: RequestDispatcher, _ params: JSONValue?, context: RequestContext) throws(CachedError) -> EventLoopFuture<MethodResult> {
        try body(dispatcher, params, context)
    }
}

/// Every method the daemon serves, in one place.
enum MethodRegistry {
    static let all: [MethodHandler] = [
        MethodHandler(GetParams.self, access: { .read(key: $0.address.key) }) { dispatcher, params, context in
            // `run` checks again (the fast path of a plain get comes there without the registry) and takes the
            // lease away from a peer that may not write.
            switch dispatcher.run(params, context: context) {
            case .now(let result): return context.eventLoop.makeSucceededFuture(result)
            case .later(let future): return future
            }
        },
        MethodHandler(SetParams.self, access: { .write(key: $0.address.key) }) { dispatcher, params, context in
            dispatcher.bounded(
                dispatcher.notifying(dispatcher.set(params, context: context), params.address.storeKey, field: params.address.storeField),
                context, method: "set"
            ).counted(dispatcher, context, method: "set", key: params.address.key)
        },
        MethodHandler(DeleteParams.self, access: { .write(key: $0.address.key) }) { dispatcher, params, context in
            dispatcher.bounded(
                dispatcher.notifying(dispatcher.delete(params, context: context), params.address.storeKey, field: params.address.storeField),
                context, method: "delete"
            ).counted(dispatcher, context, method: "delete", key: params.address.key)
        },
        MethodHandler(DeleteHashParams.self, access: { .write(key: $0.hash.hashKey) }) { dispatcher, params, context in
            dispatcher.bounded(
                dispatcher.notifying(dispatcher.deleteHash(params, context: context), params.hash.storeKey, field: nil),
                context, method: "deleteHash"
            ).counted(dispatcher, context, method: "deleteHash", key: params.hash.hashKey)
        },
        MethodHandler(ReleaseParams.self, access: { .write(key: $0.address.key) }) { dispatcher, params, context in
            let released = dispatcher.coordinator.releaseLease(params.address.location, token: params.lease, on: context.eventLoop)
            return context.eventLoop.makeSucceededFuture(MethodResult.released(released))
                .counted(dispatcher, context, method: "release", key: params.address.key)
        },
        MethodHandler(PingParams.self, access: { _ in .nothing }) { dispatcher, _, context in
            dispatcher.counters(context).record(method: "ping", key: nil, outcome: .ok)
            return context.eventLoop.makeSucceededFuture(.pong)
        },
        MethodHandler(StatsParams.self, access: { _ in .admin }) { dispatcher, _, context in
            dispatcher.counters(context).record(method: "stats", key: nil, outcome: .ok)
            return context.eventLoop.makeSucceededFuture(.json(dispatcher.statsSnapshot()))
        },
        MethodHandler(TrackParams.self, access: { _ in .anyRule }) { dispatcher, params, context in
            answered(dispatcher, "track", context) { () throws(CachedError) in try dispatcher.track(params, context: context) }
        },
        MethodHandler(NotificationsParams.self, access: { _ in .anyRule }) { dispatcher, params, context in
            answered(dispatcher, "notifications", context) { () throws(CachedError) in
                try dispatcher.claimNotifications(params, context: context)
            }
        },
        MethodHandler(MetricsParams.self, access: { _ in .admin }) { dispatcher, _, context in
            dispatcher.counters(context).record(method: "metrics", key: nil, outcome: .ok)
            return context.eventLoop.makeSucceededFuture(.json(.string(String(decoding: dispatcher.metricsExposition(), as: UTF8.self))))
        },
    ]

    /// A method answered at once (no store involved), counted by its outcome.
    static func answered(
        _ dispatcher: RequestDispatcher, _ method: String, _ context: RequestContext,
        _ body: () throws(CachedError) -> MethodResult
    ) -> EventLoopFuture<MethodResult> {
        do throws(CachedError) {
            let result = try body()
            dispatcher.counters(context).record(method: method, key: nil, outcome: .ok)
            return context.eventLoop.makeSucceededFuture(result)
        } catch {
            dispatcher.counters(context).record(method: method, key: nil, outcome: .error(error.code))
            return context.eventLoop.makeFailedFuture(error)
        }
    }

    /// The handlers by method name (names are matched as `CachedMethod` matches them).
    static let byMethod: [CachedMethod: MethodHandler] = Dictionary(uniqueKeysWithValues: all.map { ($0.method, $0) })
}
