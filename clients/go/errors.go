package cached

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// JSON-RPC error codes answered by the daemon (docs/protocol.md, "Errors").
const (
	CodeParseError       = -32700
	CodeInvalidRequest   = -32600
	CodeMethodNotFound   = -32601
	CodeInvalidParams    = -32602
	CodeInternalError    = -32603
	CodeStoreUnavailable = -32000
	CodeLimitExceeded    = -32001
	CodeStoreTimeout     = -32002
	CodeStoreError       = -32003
	CodeHandlerError     = -32004
	CodeHandlerTimeout   = -32005
	CodeOverloaded       = -32006
	CodeShuttingDown     = -32007
	CodeAccessDenied     = -32008
	CodeDeadlineExceeded = -32009
	// CodeAccessRefused: the daemon's [[access]] rules do not allow this request for this peer
	// ("uid 33 may not write Student"); the connection stays open.
	CodeAccessRefused = -32010
)

// Error is an error answered by the daemon (a JSON-RPC error object), or a request the client
// refused to send because it would be invalid (Code CodeInvalidParams).
//
// Compare with the sentinel values through errors.Is, which matches on Code alone:
//
//	if errors.Is(err, cached.ErrStoreUnavailable) { ... }
//
// An *Error with CodeDeadlineExceeded also matches context.DeadlineExceeded.
type Error struct {
	// Code is the JSON-RPC error code (the Code* constants).
	Code int
	// Message is the daemon's human-readable message.
	Message string
	// Data is the error's "data" member as sent (nil when absent), e.g. {"timeout": 0.5} for
	// CodeDeadlineExceeded or {"limit": ..., "value": ...} for CodeLimitExceeded.
	Data json.RawMessage
}

// Error implements the error interface.
func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("cached: error %d", e.Code)
	}
	return fmt.Sprintf("cached: %s (%d)", e.Message, e.Code)
}

// Is reports whether target is an *Error with the same Code (so that errors.Is works with the
// sentinel values), or context.DeadlineExceeded for CodeDeadlineExceeded.
func (e *Error) Is(target error) bool {
	if t, ok := target.(*Error); ok {
		return t.Code == e.Code
	}
	return target == context.DeadlineExceeded && e.Code == CodeDeadlineExceeded
}

// Sentinel errors, one per documented code, for errors.Is.
var (
	ErrParse            = &Error{Code: CodeParseError, Message: "parse error"}
	ErrInvalidRequest   = &Error{Code: CodeInvalidRequest, Message: "invalid request"}
	ErrMethodNotFound   = &Error{Code: CodeMethodNotFound, Message: "method not found"}
	ErrInvalidParams    = &Error{Code: CodeInvalidParams, Message: "invalid params"}
	ErrInternal         = &Error{Code: CodeInternalError, Message: "internal error"}
	ErrStoreUnavailable = &Error{Code: CodeStoreUnavailable, Message: "store unavailable"}
	ErrLimitExceeded    = &Error{Code: CodeLimitExceeded, Message: "limit exceeded"}
	ErrStoreTimeout     = &Error{Code: CodeStoreTimeout, Message: "store timeout"}
	ErrStoreError       = &Error{Code: CodeStoreError, Message: "store error"}
	ErrHandlerError     = &Error{Code: CodeHandlerError, Message: "handler error"}
	ErrHandlerTimeout   = &Error{Code: CodeHandlerTimeout, Message: "handler timeout"}
	ErrOverloaded       = &Error{Code: CodeOverloaded, Message: "overloaded"}
	ErrShuttingDown     = &Error{Code: CodeShuttingDown, Message: "shutting down"}
	ErrAccessDenied     = &Error{Code: CodeAccessDenied, Message: "access denied"}
	ErrDeadlineExceeded = &Error{Code: CodeDeadlineExceeded, Message: "deadline exceeded"}
	ErrAccessRefused    = &Error{Code: CodeAccessRefused, Message: "access refused"}
)

// ErrUnavailable is matched (errors.Is) by every transport failure: the daemon's socket cannot be
// connected, the connection was lost with the request in flight, the daemon did not answer at all
// (a stalled daemon, past the request's timeout and a grace period), or it answered garbage.
// Such errors are not *Error values.
var ErrUnavailable = errors.New("cached: daemon unavailable")

// ErrClosed is returned by calls on a Client after Close.
var ErrClosed = errors.New("cached: client closed")

type unavailableError struct {
	msg   string
	cause error
}

func (e *unavailableError) Error() string {
	if e.cause != nil {
		return "cached: " + e.msg + ": " + e.cause.Error()
	}
	return "cached: " + e.msg
}

func (e *unavailableError) Is(target error) bool { return target == ErrUnavailable }
func (e *unavailableError) Unwrap() error        { return e.cause }

func unavailable(cause error, format string, args ...any) error {
	return &unavailableError{msg: fmt.Sprintf(format, args...), cause: cause}
}

func invalidParams(format string, args ...any) error {
	return &Error{Code: CodeInvalidParams, Message: fmt.Sprintf(format, args...)}
}
