<?php

declare(strict_types=1);

namespace Cached;

/**
 * The socket failed: the daemon could not be reached, did not answer in time, closed the connection
 * mid-request, or wrote something that is not an answer. The connection has been discarded (the next
 * request opens a fresh one). Its code is 0. Whether a write that was sent took effect is unknown.
 */
final class ConnectionException extends CachedException
{
    public function __construct(string $message, ?\Throwable $previous = null)
    {
        parent::__construct($message, 0, null, $previous);
    }
}
