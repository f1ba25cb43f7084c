package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tallyauth/tally/revocation"
)

// Scenario names (Report.Scenario).
const (
	ScenarioIntrospect = "introspect"
	ScenarioRefresh    = "refresh"
	ScenarioAuthCode   = "authcode"
	ScenarioMixed      = "mixed"
)

// Outcomes specific to the scenarios beyond the token request.
const (
	// OutcomeInactive is an introspection answered {"active": false}
	// (RFC 7662 section 2.2) for a token that should be active.
	OutcomeInactive = "inactive"
	// OutcomeNoCode is an authorization request that ended neither in a
	// redirect with a code nor with an error (an unexpected page).
	OutcomeNoCode = "no_code"
)

// Target is one issuer's endpoints, as its metadata names them.
type Target struct {
	Issuer        string `json:"issuer"`
	TokenURL      string `json:"token_endpoint"`
	IntrospectURL string `json:"introspection_endpoint,omitempty"`
	AuthorizeURL  string `json:"authorization_endpoint,omitempty"`
}

// DiscoverTarget reads the metadata of issuer (see Discover) and returns
// its token, introspection (RFC 7662 section 4) and authorization
// endpoints; the last two are empty if the issuer does not publish them.
//
// issuer may also be one node of a cluster that serves one issuer URL for
// all its nodes (make cluster, the compose cluster: every node's metadata
// names the front door's issuer): then the node's document is taken as
// the cluster's (the same tenant path), Target.Issuer is the issuer it
// names (the tokens' iss), and the endpoints on the issuer's origin are
// moved to the node's, so that the load goes to the node asked for.
func DiscoverTarget(ctx context.Context, issuer string) (Target, error) {
	md, err := Discover(ctx, issuer)
	if err != nil {
		var nerr error
		if md, nerr = discover(ctx, &http.Client{Timeout: 10 * time.Second}, issuer, revocation.ThroughNode()); nerr != nil {
			return Target{}, err
		}
	} else {
		md.Issuer = issuer
	}
	t := Target{Issuer: md.Issuer, TokenURL: md.TokenEndpoint}
	if absoluteHTTP(md.IntrospectionEndpoint) {
		t.IntrospectURL = md.IntrospectionEndpoint
	}
	if absoluteHTTP(md.AuthorizationEndpoint) {
		t.AuthorizeURL = md.AuthorizationEndpoint
	}
	return t, nil
}

func absoluteHTTP(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// newLoadTransport is the keep-alive transport of one scenario's virtual
// clients.
func newLoadTransport(conns int) *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          conns,
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
}

// noRedirect makes a redirect an answer to read, not to follow.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// formPoster sends form posts and keeps a buffer for the answers; it is
// used by one goroutine at a time.
type formPoster struct {
	client *http.Client
	buf    bytes.Buffer
}

// post sends form to u (with HTTP Basic credentials when id is set, RFC
// 6749 section 2.3.1) and returns the status and body. err is non-nil
// when there was no HTTP answer.
func (p *formPoster) post(ctx context.Context, u string, form url.Values, id, secret string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if id != "" {
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	p.buf.Reset()
	_, err = p.buf.ReadFrom(io.LimitReader(resp.Body, maxResponseBytes))
	resp.Body.Close()
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, p.buf.Bytes(), nil
}

// transportOutcome is the outcome of a request without an answer; answered
// is false when ctx ended it.
func transportOutcome(ctx context.Context) (Outcome, bool) {
	return Outcome{Code: OutcomeTransport}, ctx.Err() == nil
}

// roundRobin picks virtual client i's target for its k-th iteration, so
// that the clients together spread evenly over the targets.
func roundRobin(targets []Target, i, k int) Target { return targets[(i+k)%len(targets)] }

func checkTargets(targets []Target, need func(Target) string, what string) error {
	if len(targets) == 0 {
		return errors.New("loadtest: no target")
	}
	for _, t := range targets {
		if !absoluteHTTP(need(t)) {
			return fmt.Errorf("loadtest: target %s has no %s", t.Issuer, what)
		}
	}
	return nil
}

// ClientCredentialsScenario requests client_credentials tokens (RFC 6749
// section 4.4) from the targets in turn.
type ClientCredentialsScenario struct {
	Targets          []Target
	ClientID, Secret string
	Scope            string
	Timeout          time.Duration
	transport        *http.Transport
	body             url.Values
}

// NewClientCredentialsScenario checks its arguments and returns the
// scenario; timeout bounds each request.
func NewClientCredentialsScenario(targets []Target, clientID, secret, scope string, timeout time.Duration) (*ClientCredentialsScenario, error) {
	if err := checkTargets(targets, func(t Target) string { return t.TokenURL }, "token endpoint"); err != nil {
		return nil, err
	}
	if clientID == "" {
		return nil, errors.New("loadtest: client id is required")
	}
	if timeout <= 0 {
		return nil, errors.New("loadtest: timeout must be positive")
	}
	s := &ClientCredentialsScenario{Targets: targets, ClientID: clientID, Secret: secret, Scope: scope, Timeout: timeout, transport: newLoadTransport(maxIdlePerScenario)}
	s.body = url.Values{"grant_type": {"client_credentials"}}
	if scope != "" {
		s.body.Set("scope", scope)
	}
	return s, nil
}

// maxIdlePerScenario bounds the idle keep-alive connections of one
// scenario's transport.
const maxIdlePerScenario = 1024

// Name is ScenarioClientCredentials.
func (s *ClientCredentialsScenario) Name() string { return ScenarioClientCredentials }

// CloseIdleConnections closes the scenario's idle connections.
func (s *ClientCredentialsScenario) CloseIdleConnections() { s.transport.CloseIdleConnections() }

// NewOp returns virtual client i.
func (s *ClientCredentialsScenario) NewOp(_ context.Context, i int) (Op, error) {
	return &ccOp{s: s, i: i, p: formPoster{client: &http.Client{Transport: s.transport, Timeout: s.Timeout, CheckRedirect: noRedirect}}}, nil
}

type ccOp struct {
	s    *ClientCredentialsScenario
	i, k int
	p    formPoster
}

func (o *ccOp) Do(ctx context.Context) (Outcome, bool) {
	t := roundRobin(o.s.Targets, o.i, o.k)
	o.k++
	status, body, err := o.p.post(ctx, t.TokenURL, o.s.body, o.s.ClientID, o.s.Secret)
	if err != nil {
		return transportOutcome(ctx)
	}
	return Outcome{Code: classify(status, body)}, true
}

// IntrospectScenario introspects tokens from a pool (RFC 7662 section 2),
// authenticating as a confidential client with HTTP Basic; each virtual
// client walks the pool from its own offset.
type IntrospectScenario struct {
	Targets          []Target
	ClientID, Secret string
	Tokens           []string
	Timeout          time.Duration
	transport        *http.Transport
}

// NewIntrospectScenario checks its arguments and returns the scenario.
func NewIntrospectScenario(targets []Target, clientID, secret string, tokens []string, timeout time.Duration) (*IntrospectScenario, error) {
	if err := checkTargets(targets, func(t Target) string { return t.IntrospectURL }, "introspection endpoint"); err != nil {
		return nil, err
	}
	if clientID == "" || len(tokens) == 0 {
		return nil, errors.New("loadtest: introspection needs a client id and a pool of tokens")
	}
	if timeout <= 0 {
		return nil, errors.New("loadtest: timeout must be positive")
	}
	return &IntrospectScenario{Targets: targets, ClientID: clientID, Secret: secret, Tokens: tokens, Timeout: timeout, transport: newLoadTransport(maxIdlePerScenario)}, nil
}

// Name is ScenarioIntrospect.
func (s *IntrospectScenario) Name() string { return ScenarioIntrospect }

// CloseIdleConnections closes the scenario's idle connections.
func (s *IntrospectScenario) CloseIdleConnections() { s.transport.CloseIdleConnections() }

// NewOp returns virtual client i.
func (s *IntrospectScenario) NewOp(_ context.Context, i int) (Op, error) {
	return &introspectOp{s: s, i: i, k: i * 7919, p: formPoster{client: &http.Client{Transport: s.transport, Timeout: s.Timeout, CheckRedirect: noRedirect}}}, nil
}

type introspectOp struct {
	s    *IntrospectScenario
	i, k int
	p    formPoster
}

func (o *introspectOp) Do(ctx context.Context) (Outcome, bool) {
	t := roundRobin(o.s.Targets, o.i, o.k)
	tok := o.s.Tokens[o.k%len(o.s.Tokens)]
	o.k++
	status, body, err := o.p.post(ctx, t.IntrospectURL, url.Values{"token": {tok}, "token_type_hint": {"access_token"}}, o.s.ClientID, o.s.Secret)
	if err != nil {
		return transportOutcome(ctx)
	}
	return Outcome{Code: classifyIntrospection(status, body)}, true
}

// classifyIntrospection names the outcome of an introspection: OutcomeOK
// for {"active": true}, OutcomeInactive for {"active": false}, otherwise
// like classify.
func classifyIntrospection(status int, body []byte) string {
	if status == http.StatusOK {
		var r struct {
			Active *bool `json:"active"`
		}
		if json.Unmarshal(body, &r) != nil || r.Active == nil {
			return OutcomeBadResponse
		}
		if *r.Active {
			return OutcomeOK
		}
		return OutcomeInactive
	}
	return classify(status, body)
}

// MintTokens takes n access tokens with the client_credentials grant from
// the targets in turn, for an introspection pool. It stops at the first
// failure.
func MintTokens(ctx context.Context, targets []Target, clientID, secret, scope string, n int) ([]string, error) {
	if len(targets) == 0 || n < 1 {
		return nil, errors.New("loadtest: minting needs a target and a positive count")
	}
	p := formPoster{client: &http.Client{Timeout: 10 * time.Second, CheckRedirect: noRedirect}}
	form := url.Values{"grant_type": {"client_credentials"}}
	if scope != "" {
		form.Set("scope", scope)
	}
	out := make([]string, 0, n)
	for i := range n {
		status, body, err := p.post(ctx, targets[i%len(targets)].TokenURL, form, clientID, secret)
		if err != nil {
			return out, fmt.Errorf("loadtest: minting token %d: %w", i, err)
		}
		var r struct {
			AccessToken string `json:"access_token"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &r) != nil || r.AccessToken == "" {
			return out, fmt.Errorf("loadtest: minting token %d: %s", i, classify(status, body))
		}
		out = append(out, r.AccessToken)
	}
	return out, nil
}

// tokenAnswer is the part of an RFC 6749 section 5.1 answer the scenarios
// read.
type tokenAnswer struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
}

// outcomeOf reads a token answer: OutcomeOK and the answer for a 200 with
// an access token, otherwise the error outcome.
func outcomeOf(status int, body []byte) (string, tokenAnswer) {
	code := classify(status, body)
	var a tokenAnswer
	if code == OutcomeOK {
		if json.Unmarshal(body, &a) != nil || a.AccessToken == "" {
			return OutcomeBadResponse, a
		}
	}
	return code, a
}
