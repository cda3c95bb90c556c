import NIOCore

extension RedisTopology {
    /// Sends `command` to the node that serves `key` and follows redirects; the reply (never an error
    /// reply) and the route that answered it.
    ///
    /// Fails with ``RedisClientError``: ``RedisClientError/Code/unavailable`` when no connection is
    /// up (nothing was sent), ``RedisClientError/Code/errorReply`` for an error reply,
    /// ``RedisClientError/Code/notRun`` when the last answer was a redirect and more than
    /// ``RedisRedirect/maximum`` were followed, and the transport's codes otherwise. The topology hears
    /// of every error reply through ``errorReply(_:from:attempt:on:)`` (`READONLY` after a Sentinel
    /// failover makes it resolve the master again).
    public func execute(
        _ command: RedisCommand, key: String, on eventLoop: any EventLoop
    ) -> EventLoopFuture<(reply: RedisReply, route: RedisRoute)> {
        guard let route = route(key, preferring: eventLoop) else {
            return eventLoop.makeFailedFuture(RedisClientError.noConnection)
        }
        return execute(command, key: key, route: route)
    }

    /// Like ``execute(_:key:on:)``, first on `route` (one the caller asked ``route(_:preferring:)`` for,
    /// to send more on the same connection).
    public func execute(
        _ command: RedisCommand, key: String, route: RedisRoute
    ) -> EventLoopFuture<(reply: RedisReply, route: RedisRoute)> {
        // (No extra future to retype errors: the connection fails only with RedisClientError; a cancelled
        // retry timer, the one other error, is mapped by the store like any unknown error: unavailable.)
        follow(command, key: key, route: route, asking: false, attempt: 0)
    }

    /// ``execute(_:key:on:)`` without the route.
    public func send(_ command: RedisCommand, key: String, on eventLoop: any EventLoop) -> EventLoopFuture<RedisReply> {
        execute(command, key: key, on: eventLoop).map(\.reply)
    }

    private func follow(
        _ command: RedisCommand, key: String, route: RedisRoute, asking: Bool, attempt: Int
    ) -> EventLoopFuture<(reply: RedisReply, route: RedisRoute)> {
        let loop = route.connection.eventLoop
        let sent = asking ? route.connection.sendAsking(command) : route.connection.send(command)
        return sent.flatMap { reply in
            guard case .error(let message) = reply else { return loop.makeSucceededFuture((reply, route)) }
            // At the limit the topology is not asked (nor counts the redirect): the command fails as is.
            guard attempt < RedisRedirect.maximum,
                let redirect = self.errorReply(RedisErrorReply(message), from: route.node, attempt: attempt, on: loop)
            else {
                return loop.makeFailedFuture(RedisClientError.reply(message))
            }
            switch redirect {
            case .resend(let target, let asking):
                return self.follow(command, key: key, route: target, asking: asking, attempt: attempt + 1)
            case .retry(let after):
                return after.flatMap {
                    guard let again = self.route(key, preferring: loop) else {
                        return loop.makeFailedFuture(RedisClientError.noConnection)
                    }
                    return self.follow(command, key: key, route: again, asking: false, attempt: attempt + 1)
                }
            }
        }
    }
}

extension RedisClientError {
    /// No route: no connection to the node that serves the key is up; nothing was sent.
    public static let noConnection = RedisClientError(.unavailable, "no connection to Redis is up")
}
