package loadtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
)

// User is an end user's credentials for the login page.
type User struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// UserFlow is what the authcode and refresh scenarios need: a public
// client allowed the authorization_code and refresh_token grants with a
// registered redirect URI, and users who may sign in to it.
type UserFlow struct {
	ClientID    string
	RedirectURI string
	// Scope is requested at the authorization endpoint; refresh needs
	// offline_access in it.
	Scope string
	Users []User
	// Timeout bounds each HTTP request.
	Timeout time.Duration
}

// DefaultFlowScope is the scope SetupUserFlow's client gets and the
// scenarios request.
const DefaultFlowScope = "openid offline_access"

// loopbackRedirect is the redirect URI SetupUserFlow registers: a loopback
// IP, which RFC 8252 section 7.3 lets match any port. Nothing listens on
// it; the scenarios read the code from the redirect itself.
const loopbackRedirect = "http://127.0.0.1/loadtest/callback"

// Validate reports the first problem with f, or nil.
func (f UserFlow) Validate() error {
	if f.ClientID == "" || !absoluteHTTP(f.RedirectURI) {
		return errors.New("loadtest: a user flow needs a client id and an absolute redirect URI")
	}
	if len(f.Users) == 0 {
		return errors.New("loadtest: a user flow needs at least one user")
	}
	for _, u := range f.Users {
		if u.Username == "" || u.Password == "" {
			return errors.New("loadtest: every user needs a username and a password")
		}
	}
	if f.Timeout <= 0 {
		return errors.New("loadtest: timeout must be positive")
	}
	return nil
}

// SetupUserFlow creates users (with random passwords) and a public client
// for the authcode and refresh scenarios in tenant, through the admin API.
// Names carry a per-call random suffix, so that runs do not collide.
func SetupUserFlow(ctx context.Context, admin adminv1connect.AdminServiceClient, tenant string, users int) (UserFlow, error) {
	if users < 1 {
		return UserFlow{}, errors.New("loadtest: at least one user is needed")
	}
	run := strings.ToLower(rand.Text()[:8])
	c, err := admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: tenant, Name: "loadtest-" + run, Public: true,
		GrantTypes:   []string{"authorization_code", "refresh_token"},
		Scopes:       strings.Fields(DefaultFlowScope),
		RedirectUris: []string{loopbackRedirect},
	}))
	if err != nil {
		return UserFlow{}, fmt.Errorf("loadtest: creating the public client: %w", err)
	}
	f := UserFlow{ClientID: c.Msg.Client.ClientId, RedirectURI: loopbackRedirect, Scope: DefaultFlowScope, Timeout: 10 * time.Second}
	for i := range users {
		u := User{Username: fmt.Sprintf("lt-%s-%d", run, i), Password: rand.Text()}
		if _, err := admin.CreateUser(ctx, connect.NewRequest(&adminv1.CreateUserRequest{
			Tenant: tenant, Username: u.Username, Password: u.Password, Name: "Load Test " + u.Username,
		})); err != nil {
			return UserFlow{}, fmt.Errorf("loadtest: creating user %s: %w", u.Username, err)
		}
		f.Users = append(f.Users, u)
	}
	return f, nil
}

// browser is a headless user agent: it keeps cookies (the session and CSRF
// cookies of the login and consent pages) and reads redirects instead of
// following them. One goroutine uses it at a time.
type browser struct {
	client *http.Client
	p      formPoster
}

func newBrowser(tr http.RoundTripper, jar http.CookieJar, timeout time.Duration) *browser {
	c := &http.Client{Transport: tr, Jar: jar, Timeout: timeout, CheckRedirect: noRedirect}
	return &browser{client: c, p: formPoster{client: c}}
}

// sessions signs each user in once and shares the user's cookies (the
// session, and the remembered consent) among the virtual clients acting
// for that user: a server limits password attempts per client IP (tally:
// 20 a minute), and a load generator has one IP.
type sessions struct {
	transport http.RoundTripper
	flow      *UserFlow
	mu        sync.Mutex
	jars      map[int]*sessionJar
}

type sessionJar struct {
	once sync.Once
	jar  http.CookieJar
	err  error
}

func newSessions(tr http.RoundTripper, flow *UserFlow) *sessions {
	return &sessions{transport: tr, flow: flow, jars: map[int]*sessionJar{}}
}

// browserFor returns a browser signed in as user j%len(Users) at t.
func (s *sessions) browserFor(ctx context.Context, t Target, j int) (*browser, User, error) {
	j %= len(s.flow.Users)
	u := s.flow.Users[j]
	s.mu.Lock()
	sj := s.jars[j]
	if sj == nil {
		sj = &sessionJar{}
		s.jars[j] = sj
	}
	s.mu.Unlock()
	sj.once.Do(func() {
		jar, _ := cookiejar.New(nil) // never fails without options
		b := newBrowser(s.transport, jar, s.flow.Timeout)
		oc, _, err := b.codeFlow(ctx, t, s.flow, u)
		switch {
		case err != nil:
			sj.err = err
		case oc != OutcomeOK:
			sj.err = fmt.Errorf("signing %s in: %s (a wrong password, or too many attempts: tally allows 20 a minute per client IP)", u.Username, oc)
		default:
			sj.jar = jar
		}
	})
	if sj.err != nil {
		return nil, u, sj.err
	}
	return newBrowser(s.transport, sj.jar, s.flow.Timeout), u, nil
}

var reqField = regexp.MustCompile(`name="req" value="([^"]*)"`)

// maxAuthorizeSteps bounds the pages of one authorization: the request,
// login, consent, and a spare.
const maxAuthorizeSteps = 4

// authorize runs an authorization request (RFC 6749 section 4.1.1, PKCE
// S256 per RFC 7636 section 4.3) at t as u, signing in and consenting when
// the server asks, and returns the code of the redirect. code is empty
// when the outcome is not OK; err is non-nil when a request got no answer.
func (b *browser) authorize(ctx context.Context, t Target, f *UserFlow, u User, verifier string) (code, outcome string, err error) {
	state := rand.Text()[:16]
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {f.ClientID},
		"redirect_uri":          {f.RedirectURI},
		"scope":                 {f.Scope},
		"state":                 {state},
		"code_challenge":        {oauth2.S256ChallengeFromVerifier(verifier)},
		"code_challenge_method": {"S256"},
	}
	sep := "?"
	if strings.Contains(t.AuthorizeURL, "?") {
		sep = "&"
	}
	status, body, loc, err := b.get(ctx, t.AuthorizeURL+sep+q.Encode())
	for range maxAuthorizeSteps {
		if err != nil {
			return "", OutcomeTransport, err
		}
		if loc != nil {
			// RFC 6749 section 4.1.2: the code and state, or section
			// 4.1.2.1: an error, in the redirect's query.
			lq := loc.Query()
			if e := lq.Get("error"); e != "" {
				if validErrorCode(e) {
					return "", e, nil
				}
				return "", OutcomeNoCode, nil
			}
			if lq.Get("state") != state || lq.Get("code") == "" {
				return "", OutcomeNoCode, nil
			}
			return lq.Get("code"), OutcomeOK, nil
		}
		page := string(body)
		if status == http.StatusUnauthorized && strings.Contains(page, `name="password"`) {
			// The login page again: wrong password, or too many attempts.
			return "", OutcomeLoginFailed, nil
		}
		if status != http.StatusOK {
			return "", classify(status, body), nil
		}
		m := reqField.FindStringSubmatch(page)
		if m == nil {
			return "", OutcomeNoCode, nil
		}
		form := url.Values{"req": {html.UnescapeString(m[1])}}
		switch {
		case strings.Contains(page, `name="password"`):
			form.Set("action", "login")
			form.Set("username", u.Username)
			form.Set("password", u.Password)
		case strings.Contains(page, `value="approve"`):
			form.Set("action", "approve")
		default:
			return "", OutcomeNoCode, nil
		}
		status, body, loc, err = b.postPage(ctx, t.AuthorizeURL, form)
	}
	return "", OutcomeNoCode, nil
}

// get fetches u and returns its status, body and redirect location.
func (b *browser) get(ctx context.Context, u string) (int, []byte, *url.URL, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, nil, err
	}
	return b.do(req)
}

func (b *browser) postPage(ctx context.Context, u string, form url.Values) (int, []byte, *url.URL, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

func (b *browser) do(req *http.Request) (int, []byte, *url.URL, error) {
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	b.p.buf.Reset()
	_, err = b.p.buf.ReadFrom(io.LimitReader(resp.Body, maxResponseBytes))
	resp.Body.Close()
	if err != nil {
		return 0, nil, nil, err
	}
	var loc *url.URL
	if l := resp.Header.Get("Location"); l != "" && resp.StatusCode >= 300 && resp.StatusCode < 400 {
		loc, err = req.URL.Parse(l)
		if err != nil {
			return resp.StatusCode, b.p.buf.Bytes(), nil, nil
		}
	}
	return resp.StatusCode, b.p.buf.Bytes(), loc, nil
}

// redeem exchanges code at t's token endpoint (RFC 6749 section 4.1.3,
// with the PKCE code_verifier) as the public client.
func (b *browser) redeem(ctx context.Context, t Target, f *UserFlow, code, verifier string) (string, tokenAnswer, error) {
	status, body, err := b.p.post(ctx, t.TokenURL, url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {f.RedirectURI},
		"client_id":     {f.ClientID},
		"code_verifier": {verifier},
	}, "", "")
	if err != nil {
		return OutcomeTransport, tokenAnswer{}, err
	}
	oc, a := outcomeOf(status, body)
	return oc, a, nil
}

// codeFlow runs one whole authorization code grant with PKCE at t.
func (b *browser) codeFlow(ctx context.Context, t Target, f *UserFlow, u User) (string, tokenAnswer, error) {
	verifier := oauth2.GenerateVerifier()
	code, oc, err := b.authorize(ctx, t, f, u, verifier)
	if err != nil || oc != OutcomeOK {
		return oc, tokenAnswer{}, err
	}
	return b.redeem(ctx, t, f, code, verifier)
}

func checkFlowTargets(targets []Target) error {
	if err := checkTargets(targets, func(t Target) string { return t.TokenURL }, "token endpoint"); err != nil {
		return err
	}
	return checkTargets(targets, func(t Target) string { return t.AuthorizeURL }, "authorization endpoint")
}

// AuthCodeScenario runs the whole authorization code grant with PKCE
// (RFC 6749 section 4.1, RFC 7636) per iteration: an authorization request
// (each user signs in and consents once, while the clients are prepared;
// the session and the consent are remembered after that) and the code's
// redemption at the token endpoint.
type AuthCodeScenario struct {
	Targets   []Target
	Flow      UserFlow
	transport *http.Transport
	sessions  *sessions
}

// NewAuthCodeScenario checks its arguments and returns the scenario.
func NewAuthCodeScenario(targets []Target, flow UserFlow) (*AuthCodeScenario, error) {
	if err := checkFlowTargets(targets); err != nil {
		return nil, err
	}
	if err := flow.Validate(); err != nil {
		return nil, err
	}
	sc := &AuthCodeScenario{Targets: targets, Flow: flow, transport: newLoadTransport(maxIdlePerScenario)}
	sc.sessions = newSessions(sc.transport, &sc.Flow)
	return sc, nil
}

// Name is ScenarioAuthCode.
func (s *AuthCodeScenario) Name() string { return ScenarioAuthCode }

// CloseIdleConnections closes the scenario's idle connections.
func (s *AuthCodeScenario) CloseIdleConnections() { s.transport.CloseIdleConnections() }

// NewOp returns virtual client i, acting for user i%len(Users); each user
// is signed in (with one whole flow) by the first client acting for it.
func (s *AuthCodeScenario) NewOp(ctx context.Context, i int) (Op, error) {
	b, u, err := s.sessions.browserFor(ctx, s.Targets[i%len(s.Targets)], i)
	if err != nil {
		return nil, err
	}
	return &authCodeOp{s: s, i: i, b: b, u: u}, nil
}

type authCodeOp struct {
	s    *AuthCodeScenario
	i, k int
	b    *browser
	u    User
}

func (o *authCodeOp) Do(ctx context.Context) (Outcome, bool) {
	t := roundRobin(o.s.Targets, o.i, o.k)
	o.k++
	oc, _, err := o.b.codeFlow(ctx, t, &o.s.Flow, o.u)
	if err != nil {
		return transportOutcome(ctx)
	}
	return Outcome{Code: oc}, true
}

// RefreshScenario rotates refresh tokens (RFC 6749 section 6): each virtual
// client holds its own chain, started with an authorization code grant
// while the client is prepared, and presents its latest refresh token each
// iteration. After a failed rotation the client starts a new chain,
// untimed.
type RefreshScenario struct {
	Targets   []Target
	Flow      UserFlow
	transport *http.Transport
	sessions  *sessions
}

// NewRefreshScenario checks its arguments and returns the scenario.
func NewRefreshScenario(targets []Target, flow UserFlow) (*RefreshScenario, error) {
	if err := checkFlowTargets(targets); err != nil {
		return nil, err
	}
	if err := flow.Validate(); err != nil {
		return nil, err
	}
	if !strings.Contains(" "+flow.Scope+" ", " offline_access ") {
		return nil, errors.New("loadtest: the refresh scenario needs offline_access in the scope")
	}
	sc := &RefreshScenario{Targets: targets, Flow: flow, transport: newLoadTransport(maxIdlePerScenario)}
	sc.sessions = newSessions(sc.transport, &sc.Flow)
	return sc, nil
}

// Name is ScenarioRefresh.
func (s *RefreshScenario) Name() string { return ScenarioRefresh }

// CloseIdleConnections closes the scenario's idle connections.
func (s *RefreshScenario) CloseIdleConnections() { s.transport.CloseIdleConnections() }

// NewOp starts virtual client i's refresh chain, for user
// i%len(Users), and returns the client.
func (s *RefreshScenario) NewOp(ctx context.Context, i int) (Op, error) {
	b, u, err := s.sessions.browserFor(ctx, s.Targets[i%len(s.Targets)], i)
	if err != nil {
		return nil, err
	}
	o := &refreshOp{s: s, i: i, b: b, u: u}
	if err := o.Recover(ctx); err != nil {
		return nil, err
	}
	return o, nil
}

type refreshOp struct {
	s    *RefreshScenario
	i, k int
	b    *browser
	u    User
	rt   string
}

// Recover starts a new chain with an authorization code grant.
func (o *refreshOp) Recover(ctx context.Context) error {
	o.rt = ""
	oc, a, err := o.b.codeFlow(ctx, o.s.Targets[(o.i+o.k)%len(o.s.Targets)], &o.s.Flow, o.u)
	if err != nil {
		return err
	}
	if oc != OutcomeOK {
		return fmt.Errorf("starting a refresh chain for %s: %s", o.u.Username, oc)
	}
	if a.RefreshToken == "" {
		return fmt.Errorf("starting a refresh chain for %s: no refresh token (is offline_access granted?)", o.u.Username)
	}
	o.rt = a.RefreshToken
	return nil
}

func (o *refreshOp) Do(ctx context.Context) (Outcome, bool) {
	t := roundRobin(o.s.Targets, o.i, o.k)
	o.k++
	if o.rt == "" {
		// The last Recover failed; try again, timed, as a real client would.
		if err := o.Recover(ctx); err != nil {
			if ctx.Err() != nil {
				return Outcome{}, false
			}
			return Outcome{Code: OutcomeNoRefreshToken}, true
		}
	}
	status, body, err := o.b.p.post(ctx, t.TokenURL, url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {o.rt},
		"client_id":     {o.s.Flow.ClientID},
	}, "", "")
	if err != nil {
		return transportOutcome(ctx)
	}
	oc, a := outcomeOf(status, body)
	if oc == OutcomeOK {
		if a.RefreshToken == "" {
			return Outcome{Code: OutcomeBadResponse}, true
		}
		o.rt = a.RefreshToken
	}
	return Outcome{Code: oc}, true
}

// OutcomeLoginFailed is a sign-in the login page refused: a wrong
// password, or too many attempts from this client IP.
const OutcomeLoginFailed = "login_failed"

// OutcomeNoRefreshToken is a refresh iteration that had no chain to rotate
// because starting one failed.
const OutcomeNoRefreshToken = "no_refresh_token"
