import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// `GET /metrics` over HTTP/1.1 on a TCP address or a Unix socket (`[metrics] listen`): the Prometheus
/// text exposition, nothing else. Other paths get 404, other methods 405, a request over 8 KiB 431, and a
/// connection idle for 10 s is closed; every answer closes its connection.
public final class MetricsServer: Sendable {
    /// The longest request accepted (line and headers), in bytes.
    static let maxRequestBytes = 8 * 1024
    static let idleTimeout = TimeAmount.seconds(10)

    let channel: any Channel

    private init(channel: any Channel) {
        self.channel = channel
    }

    /// Starts listening on `listen`: `HOST:PORT` (`[::1]:9464` for IPv6) or an absolute Unix socket path.
    public static func start(
        listen: String, group: any EventLoopGroup, logger: Logger, render: @escaping @Sendable () -> [UInt8]
    ) async throws -> MetricsServer {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RequestLimitHandler())
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(render: render))
                }
            }
        let channel: any Channel
        if listen.hasPrefix("/") {
            channel = try await bootstrap.bind(unixDomainSocketPath: listen, cleanupExistingSocketFile: true).get()
        } else {
            let (host, port) = try address(listen)
            channel = try await bootstrap.bind(host: host, port: port).get()
        }
        logger.info("serving metrics", metadata: ["listen": "\(channel.localAddress.map { "\($0)" } ?? listen)"])
        return MetricsServer(channel: channel)
    }

    /// `HOST:PORT` → (host, port); brackets around an IPv6 host are removed.
    static func address(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw MetricsListenError(listen: text)
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw MetricsListenError(listen: text) }
        return (host, port)
    }

    /// The port bound (TCP), for tests and logs.
    public var port: Int? { channel.localAddress?.port }

    public func shutdown() async {
        try? await channel.close()
    }
}

/// A `[metrics] listen` value that is neither `HOST:PORT` nor an absolute path.
public struct MetricsListenError: Error, CustomStringConvertible {
    public var listen: String
    public var description: String { "metrics.listen must be HOST:PORT or an absolute Unix socket path, not \"\(listen)\"" }
}

/// Bounds a request's size and a connection's idle time, before any HTTP parsing.
final class RequestLimitHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var received = 0
    private var idle: Scheduled<Void>?

    func handlerAdded(context: ChannelHandlerContext) {
        armIdle(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idle?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        received += bytes.readableBytes
        guard received <= MetricsServer.maxRequestBytes else {
            let answer = "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: answer))).whenComplete { _ in channel.close(promise: nil) }
            received = Int.min  // nothing more is passed on
            return
        }
        guard received >= 0 else { return }
        armIdle(context: context)
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        armIdle(context: context)
        context.write(data, promise: promise)
    }

    private func armIdle(context: ChannelHandlerContext) {
        idle?.cancel()
        let channel = context.channel
        idle = context.eventLoop.scheduleTask(in: MetricsServer.idleTimeout) { channel.close(promise: nil) }
    }
}

/// Answers one request per connection: `GET` (or `HEAD`) `/metrics` with the exposition.
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> [UInt8]
    private var answer: (HTTPResponseStatus, Bool)?

    init(render: @escaping @Sendable () -> [UInt8]) {
        self.render = render
    }

    /// A request that is not HTTP: the error handler before this one answered 400; the connection ends.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let channel = context.channel
        context.eventLoop.execute { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            if head.method != .GET && head.method != .HEAD {
                answer = (.methodNotAllowed, false)
            } else if path != "/metrics" {
                answer = (.notFound, false)
            } else {
                answer = (.ok, head.method == .HEAD)
            }
        case .body:
            break
        case .end:
            guard let (status, headOnly) = answer else { return }
            answer = nil
            var headers = HTTPHeaders()
            headers.add(name: "connection", value: "close")
            var body = ByteBuffer()
            if status == .ok {
                body.writeBytes(render())
                headers.add(name: "content-type", value: "text/plain; version=0.0.4; charset=utf-8")
            } else if status == .methodNotAllowed {
                headers.add(name: "allow", value: "GET, HEAD")
            }
            headers.add(name: "content-length", value: String(body.readableBytes))
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            if !headOnly, body.readableBytes > 0 { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
