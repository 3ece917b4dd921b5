package orch

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mathrand "math/rand"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Route is one operation of the HTTP API (routes.go, generated from airgap_orch/api.py).
type Route struct {
	Name        string
	Method      string
	Path        string // {name} marks a path parameter
	Scope       string // the scope a token needs for it ("": any valid token)
	Mutating    bool   // takes an Idempotency-Key
	NeedsReason bool   // X-Orch-Reason required
	NeedsTicket bool   // X-Orch-Ticket required
	TakesReason bool   // X-Orch-Reason/X-Orch-Ticket accepted
	Upload      bool   // the body is a bundle file (not supported by this SDK)
	Download    bool   // the answer is a bundle file (not supported by this SDK)
	Query       []string
}

// Routes returns every operation of the HTTP API.
func Routes() []Route { return append([]Route(nil), routeTable...) }

// RouteByName returns the operation called name, or nil.
func RouteByName(name string) *Route {
	for index := range routeTable {
		if routeTable[index].Name == name {
			return &routeTable[index]
		}
	}
	return nil
}

// Client calls the control plane of a running `airgap-orch serve`. It is safe for concurrent use.
//
// Mutating calls carry an Idempotency-Key (a fresh one, or WithIdempotencyKey's). Connection errors and 5xx answers
// are sent again up to Retries times, with capped exponential backoff and jitter (a Retry-After header, as a busy
// server sends, is honoured up to BackoffCap), under the same key: a request the server applied before its answer
// was lost gets its original answer, never applied twice. Past the retries a call returns an *Error of kind
// KindUnavailable; a caller that retries by itself passes the same key again.
type Client struct {
	URL        string        // e.g. http://127.0.0.1:8080
	Timeout    time.Duration // the wait for one answer (a long-poll claim waits its wait on top)
	Retries    int
	BackoffCap time.Duration
	HTTP       *http.Client

	mu    sync.RWMutex
	token string
}

// NewClient returns a client of the server at serverURL; token may be empty for a server run with --no-auth.
func NewClient(serverURL, token string) (*Client, error) {
	parsed, err := url.Parse(serverURL)
	if err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
		return nil, &Error{Kind: KindInvalidInput, ExitCode: 1,
			Detail: fmt.Sprintf("server URL %q must look like http://127.0.0.1:8080", serverURL)}
	}
	transport := &http.Transport{
		Proxy:               nil, // the control plane is reached directly, whatever HTTP_PROXY says
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     25 * time.Second, // below serve's --keepalive-timeout default (30 s)
		DisableCompression:  true,
	}
	return &Client{
		URL:        strings.TrimRight(serverURL, "/"),
		Timeout:    seconds(DefaultTimeoutSeconds),
		Retries:    DefaultRetries,
		BackoffCap: seconds(DefaultBackoffCapSeconds),
		HTTP:       &http.Client{Transport: transport},
		token:      token,
	}, nil
}

// SetToken uses token from the next request on (a token about to expire, replaced by a fresh one).
func (c *Client) SetToken(token string) {
	c.mu.Lock()
	c.token = token
	c.mu.Unlock()
}

func (c *Client) currentToken() string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.token
}

// CloseIdleConnections closes kept-alive connections that carry no request.
func (c *Client) CloseIdleConnections() { c.HTTP.CloseIdleConnections() }

// CallOption adjusts one call.
type CallOption func(*callOptions)

type callOptions struct {
	key     string
	timeout time.Duration
	reason  string
	ticket  string
	retries *int
	logs    []LogLine
}

// WithIdempotencyKey sends a mutating call under key (default: a fresh one per call, kept across its retries).
func WithIdempotencyKey(key string) CallOption { return func(o *callOptions) { o.key = key } }

// WithTimeout bounds the wait for this call's answer.
func WithTimeout(timeout time.Duration) CallOption {
	return func(o *callOptions) { o.timeout = timeout }
}

// WithReason sends X-Orch-Reason (an operational override's reason; it goes to the audit log).
func WithReason(reason string) CallOption { return func(o *callOptions) { o.reason = reason } }

// WithTicket sends X-Orch-Ticket.
func WithTicket(ticket string) CallOption { return func(o *callOptions) { o.ticket = ticket } }

// WithRetries overrides the client's Retries for this call.
func WithRetries(retries int) CallOption { return func(o *callOptions) { o.retries = &retries } }

// WithLogs has a Heartbeat or an Ack carry these job log lines (at most MaxLogLines); other calls ignore it
// (FailRequest and AckItem have a Logs field of their own).
func WithLogs(lines []LogLine) CallOption { return func(o *callOptions) { o.logs = lines } }

func logsOf(opts []CallOption) []LogLine {
	var options callOptions
	for _, option := range opts {
		option(&options)
	}
	return options.logs
}

// NewIdempotencyKey returns a fresh random key (a UUID).
func NewIdempotencyKey() string { return newUUID() }

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Call runs operation name (see Routes) with params as the Python SDK's OrchClient.call does: path parameters
// are taken from params, the rest travel in the query (GET) or the JSON body (POST; jobs.enqueue's body is
// params["spec"]); reason and ticket go in their headers. It returns the JSON answer.
func (c *Client) Call(ctx context.Context, name string, params map[string]any, opts ...CallOption) (map[string]any, error) {
	route := RouteByName(name)
	if route == nil {
		return nil, &Error{Op: name, Kind: KindInvalidInput, ExitCode: 1, Detail: "no such operation"}
	}
	if route.Upload || route.Download {
		return nil, &Error{Op: name, Kind: KindInvalidInput, ExitCode: 1,
			Detail: "bundle uploads and downloads are not part of the Go SDK; use the CLI"}
	}
	rest := map[string]any{}
	for key, value := range params {
		if value != nil {
			rest[key] = value
		}
	}
	path, err := fillPath(route, rest)
	if err != nil {
		return nil, err
	}
	if route.NeedsReason || route.NeedsTicket || route.TakesReason {
		for field, option := range map[string]func(string) CallOption{"reason": WithReason, "ticket": WithTicket} {
			if value, ok := rest[field]; ok {
				opts = append(opts, option(fmt.Sprint(value)))
				delete(rest, field)
			}
		}
	}
	var query url.Values
	var body any
	if route.Method == "GET" {
		query = url.Values{}
		for key, value := range rest {
			if flag, ok := value.(bool); ok {
				query.Set(key, strconv.FormatBool(flag))
			} else {
				query.Set(key, fmt.Sprint(value))
			}
		}
	} else if name == "jobs.enqueue" {
		body = rest["spec"]
	} else {
		body = rest
	}
	var answer map[string]any
	err = c.send(ctx, route, path, query, body, &answer, opts)
	return answer, err
}

func fillPath(route *Route, params map[string]any) (string, error) {
	path := route.Path
	for strings.Contains(path, "{") {
		start, end := strings.Index(path, "{"), strings.Index(path, "}")
		key := path[start+1 : end]
		value, ok := params[key]
		if !ok {
			return "", &Error{Op: route.Name, Kind: KindInvalidInput, ExitCode: 1, Detail: key + " is required"}
		}
		delete(params, key)
		path = path[:start] + url.PathEscape(fmt.Sprint(value)) + path[end+1:]
	}
	return path, nil
}

func routePath(name string, pathParams ...string) (*Route, string) {
	route := RouteByName(name)
	path := route.Path
	for _, value := range pathParams {
		start, end := strings.Index(path, "{"), strings.Index(path, "}")
		path = path[:start] + url.PathEscape(value) + path[end+1:]
	}
	return route, path
}

// send is the one transport: it sends one operation, resending as the Client's doc says, and decodes the answer
// into out (when out is not nil).
func (c *Client) send(ctx context.Context, route *Route, path string, query url.Values, body any, out any,
	opts []CallOption) error {
	var options callOptions
	for _, option := range opts {
		option(&options)
	}
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return &Error{Op: route.Name, Kind: KindInvalidInput, ExitCode: 1, Detail: "request body: " + err.Error()}
		}
	}
	key := ""
	if route.Mutating {
		key = options.key
		if key == "" {
			key = newUUID()
		}
	}
	target := c.URL + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	timeout := c.Timeout
	if options.timeout > 0 {
		timeout = options.timeout
	}
	retries := c.Retries
	if options.retries != nil {
		retries = *options.retries
	}
	for attempt := 1; ; attempt++ {
		status, header, raw, err := c.once(ctx, route.Method, target, data, key, &options, timeout)
		if err != nil {
			if ctx.Err() == nil && attempt <= retries {
				if sleep(ctx, backoff(attempt, 100*time.Millisecond, c.BackoffCap)) == nil {
					continue
				}
			}
			return &Error{Op: route.Name, Kind: KindUnavailable, MayHaveApplied: route.Mutating, cause: err,
				Detail: fmt.Sprintf("cannot reach %s: %v; is `airgap-orch serve` running?", c.URL, err)}
		}
		if status >= 500 && attempt <= retries && ctx.Err() == nil {
			pause := backoff(attempt, 100*time.Millisecond, c.BackoffCap)
			if after, parseErr := strconv.ParseFloat(header.Get("Retry-After"), 64); parseErr == nil && after >= 0 {
				pause = minDuration(seconds(after), c.BackoffCap) // the server says when to come back
			}
			if sleep(ctx, pause) == nil {
				continue
			}
		}
		if status >= 400 {
			var problem map[string]any
			if json.Unmarshal(raw, &problem) != nil || problem == nil {
				problem = map[string]any{"title": truncate(string(raw), 200)}
			}
			return problemError(route.Name, status, problem)
		}
		if out == nil || len(raw) == 0 {
			return nil
		}
		if err := json.Unmarshal(raw, out); err != nil {
			return &Error{Op: route.Name, Kind: KindInternal, ExitCode: 1, Status: status,
				Detail: "unreadable answer: " + err.Error()}
		}
		return nil
	}
}

// once sends one request and reads its whole answer.
func (c *Client) once(ctx context.Context, method, target string, data []byte, key string, options *callOptions,
	timeout time.Duration) (int, http.Header, []byte, error) {
	requestCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var reader io.Reader
	if data != nil {
		reader = bytes.NewReader(data)
	}
	request, err := http.NewRequestWithContext(requestCtx, method, target, reader)
	if err != nil {
		return 0, nil, nil, err
	}
	request.Header.Set("Accept", "application/json")
	if data != nil {
		request.Header.Set("Content-Type", "application/json")
	}
	if token := c.currentToken(); token != "" {
		request.Header.Set("Authorization", "Bearer "+token)
	}
	if key != "" {
		request.Header.Set("Idempotency-Key", key)
	}
	if options.reason != "" {
		request.Header.Set("X-Orch-Reason", options.reason)
	}
	if options.ticket != "" {
		request.Header.Set("X-Orch-Ticket", options.ticket)
	}
	response, err := c.HTTP.Do(request)
	if err != nil {
		return 0, nil, nil, err
	}
	defer response.Body.Close()
	raw, err := io.ReadAll(response.Body)
	if err != nil {
		return 0, nil, nil, err
	}
	return response.StatusCode, response.Header, raw, nil
}

// backoff is the pause before try number attempt+1: capped exponential with jitter (half fixed, half random).
func backoff(attempt int, first, ceiling time.Duration) time.Duration {
	exponent := math.Min(float64(attempt-1), 30)
	top := time.Duration(math.Min(float64(ceiling), float64(first)*math.Pow(2, exponent)))
	return top/2 + time.Duration(mathrand.Int63n(int64(top/2)+1))
}

func sleep(ctx context.Context, pause time.Duration) error {
	timer := time.NewTimer(pause)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

func seconds(value float64) time.Duration { return time.Duration(value * float64(time.Second)) }

func minDuration(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

func truncate(text string, limit int) string {
	if len(text) <= limit {
		return text
	}
	return text[:limit]
}

// isRetryable: the server was unreachable or busy, so the same request (same key) may be sent again later.
func isRetryable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrLedgerBusy)
}
