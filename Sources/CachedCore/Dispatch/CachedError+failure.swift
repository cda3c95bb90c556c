import CachedProtocol
import CachedRedis

extension CachedError {
    /// The one place where a future's failure becomes the ``CachedError`` a client is answered with.
    ///
    /// NIO's futures fail with `any Error`: the stores map their own errors (``RedisClientError``) when they
    /// fail a future, the dispatcher fails with ``CachedError`` only, and anything else is a bug in `cached`
    /// (-32603). Every other place reads a failure through this initializer, never by a cast of its own.
    init(failure error: any Error) {
        switch error {
        case let error as CachedError: self = error
        case let error as RedisClientError: self = RedisCacheStore.map(error)
        default: self = CachedError(.internalError, "Internal error: \(error)")
        }
    }

    /// Whether a store failure means the store could not be asked or did not answer (-32000, -32002):
    /// a key with a handler is then answered from its handler.
    static func isStoreDown(_ error: any Error) -> Bool {
        let code = CachedError(failure: error).code
        return code == .storeUnavailable || code == .storeTimeout
    }
}
