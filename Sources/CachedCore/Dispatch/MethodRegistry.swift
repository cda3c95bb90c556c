import CachedProtocol
import NIOCore

/// One method of the client protocol as the dispatcher runs it: its parameters model (which reads and
/// validates `params`, and names what the method takes) and what it does.
///
/// Adding a method is one entry in ``MethodRegistry/all``, a case of `CachedMethod` with its
/// `MethodParameters` type and `MethodResult` answer (in `CachedProtocol`), plus its docs and client calls.
struct MethodHandler: Sendable {
    let method: CachedMethod
    private let body: @Sendable (RequestDispatcher, JSONValue?, RequestContext) throws(CachedError) -> EventLoopFuture<MethodResult>

    /// - Parameter run: runs the validated request; its future fails only with ``CachedError``.
    init<Parameters: MethodParameters>(
        _ parameters: Parameters.Type,
        run: @escaping @Sendable (RequestDispatcher, Parameters, RequestContext) -> EventLoopFuture<MethodResult>
    ) {
        method = Parameters.method
        body = { dispatcher, params, context throws(CachedError) in
            try run(dispatcher, Parameters(params), context)
        }
    }

    /// Reads the params (a -32602 is thrown) and runs the request.
    func run(_ dispatcher: RequestDispatcher, _ params: JSONValue?, context: RequestContext) throws(CachedError) -> EventLoopFuture<MethodResult> {
        try body(dispatcher, params, context)
    }
}

/// Every method the daemon serves, in one place.
enum MethodRegistry {
    static let all: [MethodHandler] = [
        MethodHandler(GetParams.self) { dispatcher, params, context in
            switch dispatcher.run(params, context: context) {
            case .now(let result): return context.eventLoop.makeSucceededFuture(result)
            case .later(let future): return future
            }
        },
        MethodHandler(SetParams.self) { dispatcher, params, context in
            dispatcher.bounded(
                dispatcher.notifying(dispatcher.set(params, context: context), params.address.storeKey, field: params.address.storeField),
                context, method: "set"
            ).counted(dispatcher, context, method: "set", key: params.address.key)
        },
        MethodHandler(DeleteParams.self) { dispatcher, params, context in
            dispatcher.bounded(
                dispatcher.notifying(dispatcher.delete(params, context: context), params.address.storeKey, field: params.address.storeField),
                context, method: "delete"
            ).counted(dispatcher, context, method: "delete", key: params.address.key)
        },
        MethodHandler(DeleteHashParams.self) { dispatcher, params, context in
            dispatcher.bounded(
                dispatcher.notifying(dispatcher.deleteHash(params, context: context), params.hash.storeKey, field: nil),
                context, method: "deleteHash"
            ).counted(dispatcher, context, method: "deleteHash", key: params.hash.hashKey)
        },
        MethodHandler(ReleaseParams.self) { dispatcher, params, context in
            let released = dispatcher.coordinator.releaseLease(params.address.location, token: params.lease, on: context.eventLoop)
            return context.eventLoop.makeSucceededFuture(MethodResult.released(released))
                .counted(dispatcher, context, method: "release", key: params.address.key)
        },
        MethodHandler(PingParams.self) { dispatcher, _, context in
            dispatcher.counters(context).record(method: "ping", key: nil, outcome: .ok)
            return context.eventLoop.makeSucceededFuture(.pong)
        },
        MethodHandler(StatsParams.self) { dispatcher, _, context in
            dispatcher.counters(context).record(method: "stats", key: nil, outcome: .ok)
            return context.eventLoop.makeSucceededFuture(.json(dispatcher.statsSnapshot()))
        },
        MethodHandler(TrackParams.self) { dispatcher, params, context in
            answered(dispatcher, "track", context) { () throws(CachedError) in try dispatcher.track(params, context: context) }
        },
        MethodHandler(NotificationsParams.self) { dispatcher, params, context in
            answered(dispatcher, "notifications", context) { () throws(CachedError) in
                try dispatcher.claimNotifications(params, context: context)
            }
        },
        MethodHandler(MetricsParams.self) { dispatcher, _, context in
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
