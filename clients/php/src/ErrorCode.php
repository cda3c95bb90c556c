<?php

declare(strict_types=1);

namespace Cached;

/**
 * The JSON-RPC error codes of cached (docs/protocol.md, "Errors").
 */
enum ErrorCode: int
{
    case ParseError = -32700;
    case InvalidRequest = -32600;
    case MethodNotFound = -32601;
    case InvalidParams = -32602;
    case InternalError = -32603;
    case StoreUnavailable = -32000;
    case LimitExceeded = -32001;
    case StoreTimeout = -32002;
    case StoreError = -32003;
    case HandlerError = -32004;
    case HandlerTimeout = -32005;
    case Overloaded = -32006;
    case ShuttingDown = -32007;
    case AccessDenied = -32008;
    case DeadlineExceeded = -32009;
    /** The peer's [[access]] rules do not allow this request ("uid 33 may not write Student"); the connection stays open. */
    case AccessRefused = -32010;

    /**
     * Whether the daemon closes the connection after this error (the client then discards it).
     */
    public function closesConnection(): bool
    {
        return match ($this) {
            self::LimitExceeded, self::ShuttingDown, self::AccessDenied => true,
            default => false,
        };
    }
}
