package orch

import (
	"errors"
	"fmt"
	"strings"
)

// Kind is a problem type's slug: the stable name of why the server refused a request ("not-found",
// "stale-lease", ...), or KindUnavailable when no answer came.
type Kind string

// The kinds the server answers (defaults.go problemTable holds each one's HTTP status, exit code and family).
const (
	KindNotFound           Kind = "not-found"
	KindInvalidInput       Kind = "invalid-input"
	KindStaleLease         Kind = "stale-lease"
	KindIllegalTransition  Kind = "illegal-transition"
	KindConflict           Kind = "conflict"
	KindVerificationFailed Kind = "verification-failed"
	KindPolicyRefused      Kind = "policy-refused"
	KindLedgerBusy         Kind = "ledger-busy"
	KindForbidden          Kind = "forbidden"
	KindNotAuthorized      Kind = "not-authorized"
	// KindUnavailable: the server could not be reached, or did not answer, after the client's retries.
	KindUnavailable Kind = "unavailable"
	// KindInternal: the server failed (5xx) or answered a problem type this SDK does not know.
	KindInternal Kind = "internal"
)

// Sentinels for errors.Is: errors.Is(err, orch.ErrNotFound). A kind matches its family too, as the server's error
// tree says: a stale lease is a conflict, not-found is invalid input, forbidden is not-authorized.
var (
	ErrNotFound           = &Error{Kind: KindNotFound}
	ErrInvalidInput       = &Error{Kind: KindInvalidInput}
	ErrStaleLease         = &Error{Kind: KindStaleLease}
	ErrIllegalTransition  = &Error{Kind: KindIllegalTransition}
	ErrConflict           = &Error{Kind: KindConflict}
	ErrVerificationFailed = &Error{Kind: KindVerificationFailed}
	ErrPolicyRefused      = &Error{Kind: KindPolicyRefused}
	ErrLedgerBusy         = &Error{Kind: KindLedgerBusy}
	ErrForbidden          = &Error{Kind: KindForbidden}
	ErrNotAuthorized      = &Error{Kind: KindNotAuthorized}
	ErrUnavailable        = &Error{Kind: KindUnavailable}
)

type problemRow struct {
	className string
	kind      Kind
	status    int
	exitCode  int
	families  []Kind
}

// Error is a refusal from the server (its problem+json answer) or the client's failure to get an answer.
type Error struct {
	Op       string // the operation, e.g. "jobs.ack"
	Kind     Kind
	Type     string // the problem type URI as the server sent it
	Status   int    // HTTP status; 0 when no answer came
	ExitCode int    // what the CLI exits with for the same refusal (README "Exit codes")
	Detail   string // the server's one line: what was wrong and what to do
	Index    *int   // in a batch request, the position of the refused item
	Field    string // the refused field's path within that item (or the body)
	// MayHaveApplied: no answer came for a change that reached the server, which may have applied it. Send it
	// again under the same Idempotency-Key (CallOptions.IdempotencyKey) to get its original answer.
	MayHaveApplied bool
	cause          error
}

func (e *Error) Error() string {
	var text strings.Builder
	if e.Op != "" {
		text.WriteString(e.Op + ": ")
	}
	if e.Detail != "" {
		text.WriteString(e.Detail)
	} else {
		text.WriteString(string(e.Kind))
	}
	if e.Status != 0 {
		fmt.Fprintf(&text, " (%s, HTTP %d, exit code %d)", e.Kind, e.Status, e.ExitCode)
	}
	return text.String()
}

// Unwrap returns the transport error behind an unavailable server, if any.
func (e *Error) Unwrap() error { return e.cause }

// Is reports whether target (one of the Err* sentinels, or an *Error with only Kind set) names this error's kind
// or one of its families.
func (e *Error) Is(target error) bool {
	other, ok := target.(*Error)
	if !ok || other.Kind == "" {
		return false
	}
	for _, kind := range e.Families() {
		if kind == other.Kind {
			return true
		}
	}
	return false
}

// Families returns this error's kind and the kinds it belongs to, most specific first.
func (e *Error) Families() []Kind {
	if row := problemFor(e.Kind); row != nil {
		return row.families
	}
	return []Kind{e.Kind}
}

// Stale reports whether the error means the lease is not the caller's any more (expired, superseded, or the job
// is gone): drop the job, never retry the report.
func (e *Error) Stale() bool {
	return e.Is(ErrConflict) || e.Is(ErrNotFound)
}

func problemFor(kind Kind) *problemRow {
	for index := range problemTable {
		if problemTable[index].kind == kind {
			return &problemTable[index]
		}
	}
	return nil
}

func problemForClass(className string) *problemRow {
	for index := range problemTable {
		if problemTable[index].className == className {
			return &problemTable[index]
		}
	}
	return nil
}

// ExitCodeOf is the CLI exit code for err: an *Error's ExitCode, 0 for nil, 1 otherwise.
func ExitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	var refusal *Error
	if errors.As(err, &refusal) && refusal.ExitCode != 0 {
		return refusal.ExitCode
	}
	return 1
}

// problemError builds the Error a problem+json answer stands for.
func problemError(op string, status int, problem map[string]any) *Error {
	typeURI, _ := problem["type"].(string)
	detail, _ := problem["detail"].(string)
	if detail == "" {
		detail, _ = problem["title"].(string)
	}
	if detail == "" {
		detail = fmt.Sprintf("HTTP %d", status)
	}
	err := &Error{Op: op, Type: typeURI, Status: status, Detail: detail}
	slug := Kind(strings.TrimPrefix(typeURI, ProblemBase))
	switch row := problemFor(slug); {
	case row != nil:
		err.Kind, err.ExitCode = slug, row.exitCode
	case status == 503: // the door's own refusals (too many connections): nothing was applied, safe to retry
		err.Kind, err.ExitCode = KindLedgerBusy, problemFor(KindLedgerBusy).exitCode
	case status >= 500:
		err.Kind, err.ExitCode = KindInternal, 1
	default: // the door's own refusals of a malformed request (payload-too-large, malformed-json, ...)
		err.Kind, err.ExitCode = KindInvalidInput, 1
	}
	if code, ok := problem["exit_code"].(float64); ok {
		err.ExitCode = int(code)
	}
	if index, ok := problem["index"].(float64); ok {
		position := int(index)
		err.Index = &position
	}
	err.Field, _ = problem["field"].(string)
	return err
}

// resultError builds the Error of one refused item in a jobs.ack_many answer ({type: ClassName, message,
// exit_code}).
func resultError(op string, item map[string]any) *Error {
	className, _ := item["type"].(string)
	message, _ := item["message"].(string)
	err := &Error{Op: op, Detail: message, Kind: KindInternal, ExitCode: 1}
	if row := problemForClass(className); row != nil {
		err.Kind, err.Status, err.ExitCode, err.Type = row.kind, row.status, row.exitCode, ProblemBase+string(row.kind)
	}
	if code, ok := item["exit_code"].(float64); ok {
		err.ExitCode = int(code)
	}
	return err
}
