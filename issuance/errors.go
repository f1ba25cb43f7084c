package issuance

import (
	"errors"
	"fmt"
	"net/http"
)

// ErrInvalidToken is returned by Server.Inspect for a string that is not a
// token of the tenant: malformed, forged, or minted by another tenant or
// issuer. It matches ErrNotFound with errors.Is, so admin code can treat both
// alike.
var ErrInvalidToken = fmt.Errorf("%w: not a token of this tenant", ErrNotFound)

// Error codes of the protocol errors this package returns.
const (
	// RFC 6749 §5.2.
	CodeInvalidRequest       = "invalid_request"
	CodeInvalidClient        = "invalid_client"
	CodeInvalidGrant         = "invalid_grant"
	CodeUnauthorizedClient   = "unauthorized_client"
	CodeUnsupportedGrantType = "unsupported_grant_type"
	CodeInvalidScope         = "invalid_scope"
	// RFC 6749 §4.1.2.1, used for failures that are not the client's fault.
	CodeServerError            = "server_error"
	CodeTemporarilyUnavailable = "temporarily_unavailable"
	// RFC 8707 §2.
	CodeInvalidTarget = "invalid_target"
)

// Error is the one protocol error of this package, rendered on the wire as an
// RFC 6749 §5.2 JSON error {"error": Code, "error_description": Description}
// with HTTP status Status. Debug carries detail for logs only; it never
// reaches the wire.
//
// Description must consist of the characters RFC 6749 §5.2 allows in
// error_description (%x20-21 / %x23-5B / %x5D-7E); it never echoes request
// input.
type Error struct {
	Code        string
	Description string
	Status      int
	Debug       error
}

// Error implements error. It includes Debug, so it is for logs, not the wire.
func (e *Error) Error() string {
	if e.Debug != nil {
		return fmt.Sprintf("issuance: %s: %s: %v", e.Code, e.Description, e.Debug)
	}
	return fmt.Sprintf("issuance: %s: %s", e.Code, e.Description)
}

// Unwrap returns Debug, so errors.Is and errors.As see the cause.
func (e *Error) Unwrap() error { return e.Debug }

func newError(code string, status int, desc string, debug error) *Error {
	return &Error{Code: code, Description: desc, Status: status, Debug: debug}
}

func errInvalidRequest(desc string) *Error {
	return newError(CodeInvalidRequest, http.StatusBadRequest, desc, nil)
}

func errInvalidClient(desc string, debug error) *Error {
	return newError(CodeInvalidClient, http.StatusUnauthorized, desc, debug)
}

func errInvalidScope(desc string) *Error {
	return newError(CodeInvalidScope, http.StatusBadRequest, desc, nil)
}

func errInvalidTarget(desc string) *Error {
	return newError(CodeInvalidTarget, http.StatusBadRequest, desc, nil)
}

func errUnavailable(desc string, debug error) *Error {
	return newError(CodeTemporarilyUnavailable, http.StatusServiceUnavailable, desc, debug)
}

// asError converts any error into an *Error: protocol errors pass through,
// anything else becomes a 500 server_error whose detail stays in Debug.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		if e.Status == 0 {
			c := *e
			c.Status = http.StatusBadRequest
			return &c
		}
		return e
	}
	return newError(CodeServerError, http.StatusInternalServerError, "internal error", err)
}
