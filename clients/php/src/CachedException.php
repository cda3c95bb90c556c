<?php

declare(strict_types=1);

namespace Cached;

/**
 * An error answer of the daemon. getCode() is the JSON-RPC code (see {@see ErrorCode}), getData() the
 * error's `data` member (decoded as arrays), if any.
 *
 * Subclasses for the common codes: {@see InvalidParamsException} (-32602), {@see StoreUnavailableException}
 * (-32000), {@see LimitExceededException} (-32001), {@see DeadlineExceededException} (-32009).
 * {@see ConnectionException} (a socket failure) extends this class with code 0.
 */
class CachedException extends \RuntimeException
{
    public const PARSE_ERROR = -32700;
    public const INVALID_REQUEST = -32600;
    public const METHOD_NOT_FOUND = -32601;
    public const INVALID_PARAMS = -32602;
    public const INTERNAL_ERROR = -32603;
    public const STORE_UNAVAILABLE = -32000;
    public const LIMIT_EXCEEDED = -32001;
    public const STORE_TIMEOUT = -32002;
    public const STORE_ERROR = -32003;
    public const HANDLER_ERROR = -32004;
    public const HANDLER_TIMEOUT = -32005;
    public const OVERLOADED = -32006;
    public const SHUTTING_DOWN = -32007;
    public const ACCESS_DENIED = -32008;
    public const DEADLINE_EXCEEDED = -32009;
    public const ACCESS_REFUSED = -32010;

    /**
     * @param string $message the daemon's message
     * @param int $code the JSON-RPC error code
     * @param mixed $data the error's `data` member (null when absent)
     */
    public function __construct(string $message, int $code, private readonly mixed $data = null, ?\Throwable $previous = null)
    {
        parent::__construct($message, $code, $previous);
    }

    /**
     * The error's `data` member, e.g. `['limit' => 'max_line_bytes', 'value' => 16777216]` for -32001.
     */
    public function getData(): mixed
    {
        return $this->data;
    }

    /**
     * The code as an enum case (null for a code cached does not document, and for a ConnectionException).
     */
    public function getErrorCode(): ?ErrorCode
    {
        return ErrorCode::tryFrom($this->getCode());
    }

    /**
     * The exception for an error object of an answer: the subclass of its code, if it has one.
     *
     * @param array<mixed> $error the answer's `error` member
     * @internal
     */
    public static function fromError(array $error): self
    {
        $code = is_int($error['code'] ?? null) ? $error['code'] : self::INTERNAL_ERROR;
        $message = is_string($error['message'] ?? null) ? $error['message'] : 'cached answered an error';
        $data = $error['data'] ?? null;
        return match ($code) {
            self::INVALID_PARAMS => new InvalidParamsException($message, $code, $data),
            self::STORE_UNAVAILABLE => new StoreUnavailableException($message, $code, $data),
            self::LIMIT_EXCEEDED => new LimitExceededException($message, $code, $data),
            self::DEADLINE_EXCEEDED => new DeadlineExceededException($message, $code, $data),
            default => new self($message, $code, $data),
        };
    }
}
