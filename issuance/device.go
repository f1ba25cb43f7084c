package issuance

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// userCodeAlphabet is RFC 8628 §6.1's base-20 set: consonants only, no
// vowels (no words) and no easily confused letters. 8 characters give
// 20^8 ≈ 2^34.5 codes; with entry rate-limited per session and per IP and
// codes living minutes, guessing is useless (RFC 8628 §5.1).
const userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"

const userCodeLen = 8

// newUserCode draws a user code uniformly (rejection sampling).
func (s *Server) newUserCode() (string, error) {
	var out [userCodeLen]byte
	var b [1]byte
	for i := 0; i < userCodeLen; {
		if _, err := s.cfg.Rand.Read(b[:]); err != nil {
			return "", err
		}
		if b[0] >= 240 { // 240 = 12*20: keep the draw uniform
			continue
		}
		out[i] = userCodeAlphabet[int(b[0])%len(userCodeAlphabet)]
		i++
	}
	return string(out[:]), nil
}

// formatUserCode shows a normalized code as XXXX-XXXX.
func formatUserCode(c string) string { return c[:4] + "-" + c[4:] }

// NormalizeUserCode accepts a user code as typed: case-insensitive, with
// dashes and spaces anywhere (RFC 8628 §6.1). ok is false for anything
// that cannot be a code.
func NormalizeUserCode(in string) (string, bool) {
	if len(in) > 32 {
		return "", false
	}
	var b strings.Builder
	for _, r := range strings.ToUpper(in) {
		switch {
		case r == '-' || r == ' ':
			continue
		case r < 0x80 && strings.IndexByte(userCodeAlphabet, byte(r)) >= 0:
			b.WriteRune(r)
		default:
			return "", false
		}
	}
	if b.Len() != userCodeLen {
		return "", false
	}
	return b.String(), true
}

// deviceAuthResponse is RFC 8628 §3.2.
type deviceAuthResponse struct {
	DeviceCode              string `json:"device_code"`
	UserCode                string `json:"user_code"`
	VerificationURI         string `json:"verification_uri"`
	VerificationURIComplete string `json:"verification_uri_complete"`
	ExpiresIn               int64  `json:"expires_in"`
	Interval                int64  `json:"interval"`
}

// authenticateFlowClient authenticates the client of an end-user grant:
// confidential clients with their secret, public clients (RFC 6749 §2.1)
// by client_id alone — PKCE, the one-time device code or the refresh
// token's rotation protects them instead.
func (s *Server) authenticateFlowClient(ctx context.Context, tenant string, cc ClientCredentials, now time.Time) (Client, error) {
	if cc.Method != "" || cc.ID == "" || len(cc.ID) > maxCredentialLen || s.certAuthenticates(ctx, tenant, cc.ID) {
		return s.authenticateClient(ctx, tenant, cc, now)
	}
	c, err := s.st.Client(ctx, tenant, cc.ID)
	switch {
	case errors.Is(err, ErrNotFound):
		return Client{}, errInvalidClient("client authentication failed", errors.New("unknown client"))
	case err != nil:
		return Client{}, errUnavailable("client lookup failed", err)
	case !c.Public:
		return Client{}, errInvalidClient("client authentication failed", errors.New("confidential client without secret"))
	case c.Disabled || c.Tenant != tenant:
		return Client{}, errInvalidClient("client authentication failed", errors.New("client disabled"))
	}
	s.bindPublicCert(ctx, now) // cnf.go
	return c, nil
}

// handleDeviceAuthorization is RFC 8628 §3.1 and §3.2.
func (s *Server) handleDeviceAuthorization(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	resp, err := func() (*deviceAuthResponse, error) {
		t, err := s.tenant(ctx, r)
		if err != nil {
			return nil, err
		}
		// Every authorization is a Raft write: bound them per IP before
		// anything else, and per client once it is known (RFC 8628 §5.2).
		if ok, wait := s.device.authIP.allow(ipKey(clientIP(r)), s.cfg.Now()); !ok {
			return nil, errRateLimited(wait)
		}
		form, err := readForm(r, s.cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		cc, err := readClientCredentials(r.Header, form)
		if err != nil {
			return nil, err
		}
		now := s.cfg.Now()
		c, err := s.authenticateFlowClient(ctx, t.ID, cc, now)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(c.GrantTypes, GrantDeviceCode) && !slices.Contains(c.GrantTypes, "device_code") {
			return nil, newError(CodeUnauthorizedClient, http.StatusBadRequest, "client is not allowed to use the device grant", nil)
		}
		if ok, wait := s.device.authClient.allow(c.ID, now); !ok {
			return nil, errRateLimited(wait)
		}
		scope := c.Scopes
		if v := form.Get(paramScope); v != "" {
			if scope, err = ParseScope(v); err != nil {
				return nil, errInvalidScope("malformed scope")
			}
			for _, sc := range scope {
				if !slices.Contains(c.Scopes, sc) {
					return nil, errInvalidScope("requested scope is not allowed for this client")
				}
			}
		}
		var b [32]byte
		if _, err := s.cfg.Rand.Read(b[:]); err != nil {
			return nil, errUnavailable("randomness unavailable", err)
		}
		deviceCode := "tlyd1." + encodeB64(b[:])
		var uc string
		for attempt := 0; ; attempt++ {
			if uc, err = s.newUserCode(); err != nil {
				return nil, errUnavailable("randomness unavailable", err)
			}
			err = s.grantW.CreateDeviceCode(ctx, DeviceCode{Tenant: t.ID, UserCode: uc, ClientID: c.ID, Scopes: scope,
				ExpiresAt: now.Add(s.cfg.DeviceCodeTTL)}, sha256Sum(deviceCode), s.cfg.DevicePollInterval)
			if !errors.Is(err, ErrUserCodeInUse) || attempt == 4 {
				break
			}
		}
		if err != nil {
			return nil, errUnavailable("the device code could not be stored now, retry", err)
		}
		vu := s.Issuer(t.ID) + "/device"
		return &deviceAuthResponse{
			DeviceCode:              deviceCode,
			UserCode:                formatUserCode(uc),
			VerificationURI:         vu,
			VerificationURIComplete: vu + "?user_code=" + url.QueryEscape(formatUserCode(uc)),
			ExpiresIn:               int64(s.cfg.DeviceCodeTTL.Seconds()),
			Interval:                int64(s.cfg.DevicePollInterval.Seconds()),
		}, nil
	}()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.respond(w, r, http.StatusOK, resp, "no-store")
}

// handleDevicePage is the verification URI (RFC 8628 §3.3): sign in, enter
// (or confirm) the user code, see which client asks for what, approve or
// deny.
func (s *Server) handleDevicePage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	t, err := s.tenant(ctx, r)
	if err != nil {
		s.errorPage(w, r, http.StatusNotFound, "Unknown tenant.")
		return
	}
	now := s.cfg.Now()
	if r.Method == http.MethodGet {
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil || len(q["user_code"]) > 1 {
			s.errorPage(w, r, http.StatusBadRequest, "The request is malformed.")
			return
		}
		p := &pending{MaxAge: -1}
		typed := q.Get("user_code")
		sess, u := s.readSession(ctx, r, t.ID, now)
		if sess == nil {
			p.UserCode = typed
			s.showLogin(w, r, t, Client{Name: "your device"}, p, "device", "")
			return
		}
		s.deviceLookup(w, r, t, p, u, typed)
		return
	}
	vals, err := readForm(r, s.cfg.MaxBodyBytes)
	if err != nil {
		s.errorPage(w, r, http.StatusBadRequest, "The request is malformed.")
		return
	}
	p, ok := s.openPending(r, t, vals, "device")
	if !ok {
		s.errorPage(w, r, http.StatusBadRequest, "This form has expired or was not issued to this browser. Open the verification page again.")
		return
	}
	switch vals.Get("action") {
	case "login":
		s.deviceLogin(w, r, t, p, vals, now)
	case "lookup":
		_, u := s.readSession(ctx, r, t.ID, now)
		if u == nil {
			s.showLogin(w, r, t, Client{Name: "your device"}, &pending{MaxAge: -1}, "device", "")
			return
		}
		s.deviceLookup(w, r, t, &pending{MaxAge: -1}, u, vals.Get("user_code"))
	case "approve", "deny":
		s.deviceDecide(w, r, t, p, vals.Get("action") == "approve", now)
	default:
		s.errorPage(w, r, http.StatusBadRequest, "The form is malformed.")
	}
}

// deviceLogin signs the user in from the device page's login form, then
// looks the pending user code up.
func (s *Server) deviceLogin(w http.ResponseWriter, r *http.Request, t Tenant, p *pending, vals url.Values, now time.Time) {
	if !s.signinAllowed(r, t.ID, vals.Get("username"), now) {
		s.metrics.signinFailure(r.Context(), "rate_limited")
		s.showLogin(w, r, t, Client{Name: "your device"}, p, "device", "Too many attempts. Wait a minute and try again.")
		return
	}
	u, err := s.checkPassword(r.Context(), t.ID, vals.Get("username"), vals.Get("password"))
	if errors.Is(err, errHashBusy) {
		s.showLogin(w, r, t, Client{Name: "your device"}, p, "device", "Too many attempts. Wait a minute and try again.")
		return
	}
	if err != nil {
		s.showLogin(w, r, t, Client{Name: "your device"}, p, "device", "Invalid username or password.")
		return
	}
	if _, err := s.startSession(r.Context(), w, t.ID, u, now); err != nil {
		s.errorPage(w, r, http.StatusServiceUnavailable, "Please try again.")
		return
	}
	s.deviceLookup(w, r, t, &pending{MaxAge: -1}, &u, p.UserCode)
}

// deviceDecide approves or denies the confirmed user code for the
// signed-in user who confirmed it.
func (s *Server) deviceDecide(w http.ResponseWriter, r *http.Request, t Tenant, p *pending, approve bool, now time.Time) {
	ctx := r.Context()
	sess, u := s.readSession(ctx, r, t.ID, now)
	if sess == nil || u.ID != p.UserID || p.UserCode == "" {
		s.showLogin(w, r, t, Client{Name: "your device"}, &pending{MaxAge: -1}, "device", "")
		return
	}
	err := s.grantW.DecideDeviceCode(ctx, t.ID, p.UserCode, approve, u.ID, time.Unix(sess.AuthTime, 0))
	switch {
	case errors.Is(err, ErrGrantInvalid), errors.Is(err, ErrExpiredToken):
		s.renderPage(w, r, http.StatusBadRequest, "done.html", pageData{Title: "Code expired", Message: "This code has expired or was already used. Start again on your device."})
	case err != nil:
		s.errorPage(w, r, http.StatusServiceUnavailable, "Please try again.")
	case approve:
		s.renderPage(w, r, http.StatusOK, "done.html", pageData{Title: "Device approved", Message: "Done. You can return to your device."})
	default:
		s.renderPage(w, r, http.StatusOK, "done.html", pageData{Title: "Request denied", Message: "The device was not given access."})
	}
}

// deviceLookup shows the entry form (no code yet) or, for a code that is
// pending, the confirmation page. Every lookup counts against the limits
// per browser and per IP.
func (s *Server) deviceLookup(w http.ResponseWriter, r *http.Request, t Tenant, p *pending, u *User, typed string) {
	ctx := r.Context()
	now := s.cfg.Now()
	entry := func(msg string, status int) {
		req, err := s.sealPending(w, r, t, p, "device")
		if err != nil {
			s.errorPage(w, r, http.StatusServiceUnavailable, "Please try again.")
			return
		}
		s.renderPage(w, r, status, "device.html", pageData{Title: "Connect a device", Error: msg, Username: u.Username,
			Action: s.formAction(t, "device"), Req: req, UserCode: typed})
	}
	if typed == "" {
		entry("", http.StatusOK)
		return
	}
	browser := ""
	if c, err := r.Cookie(csrfCookie); err == nil {
		browser = c.Value
	}
	if !s.codeIPLimit.allow(clientIP(r), now) || (browser != "" && !s.codeSLimit.allow(browser, now)) || !s.userCodeGate(ctx) {
		entry("Too many attempts. Wait a minute and try again.", http.StatusTooManyRequests)
		return
	}
	code, ok := NormalizeUserCode(typed)
	if !ok {
		entry("That is not a valid code.", http.StatusBadRequest)
		return
	}
	d, err := s.users.DeviceCode(ctx, t.ID, code)
	if err != nil || d.Status != "pending" || !now.Before(d.ExpiresAt) {
		if errors.Is(err, ErrNotFound) {
			s.userCodeMiss(ctx, t.ID, u.ID) // a code that never was: a guess (alerts.go)
		}
		entry("Unknown or expired code.", http.StatusBadRequest)
		return
	}
	c, err := s.st.Client(ctx, t.ID, d.ClientID)
	if err != nil || c.Disabled {
		entry("Unknown or expired code.", http.StatusBadRequest)
		return
	}
	p.UserCode, p.UserID, p.ClientID, p.Scopes = code, u.ID, c.ID, d.Scopes
	s.showConsent(w, r, t, c, p, u, "device")
}

// deviceCodeGrant is the device access token request, RFC 8628 §3.4 and
// §3.5. Polls that change nothing (pending, too early, denied, expired,
// unknown) are answered from the local replica without a write, paced per
// device code on this node (see device_pace.go); a poll of an approved
// code is one replicated command that redeems it once, cluster-wide.
type deviceCodeGrant struct{ s *Server }

var (
	errSlowDown = newError("slow_down", http.StatusBadRequest, "polling too fast, add 5 seconds to the interval", nil)
	errPending  = newError("authorization_pending", http.StatusBadRequest, "the user has not yet approved", nil)
	errDenied   = newError(CodeAccessDenied, http.StatusBadRequest, "the user denied the request", nil)
	errExpired  = newError("expired_token", http.StatusBadRequest, "the device code has expired", nil)
)

// errRateLimited is 429 with Retry-After. Its code is slow_down, which a
// device client understands (it waits 5 s longer) and others read as an
// error.
func errRateLimited(wait time.Duration) *Error {
	return newError("slow_down", http.StatusTooManyRequests, "too many requests, retry later", &RateLimited{RetryAfter: wait})
}

// localPoll answers a poll from the local replica when it changes nothing.
// It returns nil when the code is approved and must be redeemed by a
// command.
func (g *deviceCodeGrant) localPoll(ctx context.Context, rd DeviceCodeReader, gr GrantRequest, hash []byte, allowed bool, wait time.Duration) error {
	s := g.s
	d, err := rd.DeviceCodeByHash(ctx, gr.Tenant.ID, hash)
	switch {
	case errors.Is(err, ErrNotFound) || (err == nil && (d.ClientID != gr.Client.ID || d.Status == "redeemed")):
		if !allowed {
			return errRateLimited(wait)
		}
		return errInvalidGrant("invalid device code", err)
	case err != nil:
		return errUnavailable("the device code could not be checked now, retry", err)
	case !allowed:
		return errSlowDown
	case !gr.Now.Before(d.ExpiresAt):
		return errExpired
	}
	interval := d.Interval
	if interval <= 0 {
		interval = s.cfg.DevicePollInterval
	}
	if s.device.pacer.poll(string(hash), interval, d.ExpiresAt, gr.Now) != paceOnTime {
		return errSlowDown
	}
	switch d.Status {
	case "pending":
		return errPending
	case "denied":
		return errDenied
	}
	return nil
}

func (g *deviceCodeGrant) HandleGrant(ctx context.Context, gr GrantRequest) (*TokenResponse, error) {
	s, req, c := g.s, gr.Request, gr.Client
	if req.DeviceCode == "" {
		return nil, errInvalidRequest("missing device_code")
	}
	allowed, wait := allowBoth(s.device.pollIP, s.device.pollClient, gr.ClientIP, c.ID, gr.Now)
	if len(req.DeviceCode) > 128 || !strings.HasPrefix(req.DeviceCode, "tlyd1.") {
		if !allowed {
			return nil, errRateLimited(wait)
		}
		return nil, errInvalidGrant("invalid device code", nil)
	}
	hash := sha256Sum(req.DeviceCode)
	if rd, ok := s.users.(DeviceCodeReader); ok {
		if err := g.localPoll(ctx, rd, gr, hash, allowed, wait); err != nil {
			return nil, err
		}
	} else if !allowed {
		return nil, errRateLimited(wait)
	}
	iss, err := s.prepareAccess(gr, "", nil, gr.Now)
	if err != nil {
		return nil, err
	}
	poll := DevicePoll{Tenant: gr.Tenant.ID, CodeHash: hash, ClientID: c.ID, AccessToken: iss.accessRef()}
	var refresh string
	if slices.Contains(c.GrantTypes, GrantRefreshToken) {
		fam, err := randomID(s.cfg.Rand)
		if err != nil {
			return nil, errUnavailable("randomness unavailable", err)
		}
		if refresh, err = s.newRefreshToken(gr.Tenant.ID, fam, 1, gr.refreshBound(ctx)); err != nil {
			return nil, errUnavailable("randomness unavailable", err)
		}
		poll.Family = &NewFamily{ID: fam, Hash: sha256Sum(refresh), ExpiresAt: gr.Now.Add(s.cfg.RefreshTTL), IdleTimeout: s.cfg.RefreshIdleTimeout}
	}
	dg, err := s.grantW.PollDeviceCode(ctx, poll)
	switch {
	case errors.Is(err, ErrAuthorizationPending):
		return nil, errPending
	case errors.Is(err, ErrSlowDown):
		return nil, errSlowDown
	case errors.Is(err, ErrAccessDenied):
		return nil, errDenied
	case errors.Is(err, ErrExpiredToken):
		return nil, errExpired
	case errors.Is(err, ErrGrantInvalid):
		return nil, errInvalidGrant("invalid device code", err)
	case err != nil:
		return nil, errUnavailable("the device code could not be checked now, retry", err)
	}
	s.device.pacer.forget(string(hash)) // redeemed: later polls are invalid_grant
	u, err := s.users.User(ctx, gr.Tenant.ID, dg.UserID)
	if err != nil || !u.Active() {
		return nil, errInvalidGrant("the user is unknown or disabled", err)
	}
	iss.access.Subject, iss.access.Scope = u.ID, dg.Scopes
	iss.scopes, iss.auth = dg.Scopes, dg.AuthTime
	if dg.Family != nil {
		iss.refresh = refresh
	}
	return s.finishUserTokens(ctx, gr, iss, &u, "")
}
