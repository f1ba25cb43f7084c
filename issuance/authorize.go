package issuance

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Authorization response errors (RFC 6749 §4.1.2.1, OIDC Core §3.1.2.6).
const (
	CodeUnsupportedResponseType = "unsupported_response_type"
	CodeAccessDenied            = "access_denied"
	CodeLoginRequired           = "login_required"
	CodeConsentRequired         = "consent_required"
)

// Scopes with a meaning to the server (OIDC Core §3.1.2.1, §5.4, §11).
const (
	ScopeOpenID        = "openid"
	ScopeProfile       = "profile"
	ScopeEmail         = "email"
	ScopeOfflineAccess = "offline_access"
)

// pendingTTL bounds how long a login, consent or device form stays valid.
const pendingTTL = 15 * time.Minute

// pending is an authorization request (or a device verification) carried
// sealed through the login and consent forms, so nothing is stored until
// the user is done. It is bound to the browser's CSRF cookie.
type pending struct {
	ClientID    string   `json:"c,omitempty"`
	RedirectURI string   `json:"r,omitempty"`
	State       string   `json:"s,omitempty"`
	Challenge   string   `json:"ch,omitempty"`
	Nonce       string   `json:"n,omitempty"`
	Scopes      []string `json:"sc,omitempty"`
	Prompt      []string `json:"p,omitempty"`
	MaxAge      int64    `json:"ma"` // -1: absent
	LoginHint   string   `json:"lh,omitempty"`
	CSRF        string   `json:"x"`
	LoginDone   bool     `json:"ld,omitempty"`
	UserID      string   `json:"u,omitempty"` // the user shown the consent page
	Consented   bool     `json:"cg,omitempty"`
	Expires     int64    `json:"e"`
	// Device verification only: the normalized user code.
	UserCode string `json:"uc,omitempty"`
	// DPoPJKT binds the code to a DPoP key (RFC 9449 §10, dpop.go).
	DPoPJKT string `json:"dj,omitempty"`
}

func pendingAAD(tenant, kind string) string { return "pending|" + kind + "|" + tenant }

// authzParams are the parameters of an authorization request. The values
// of each are read once; a repeated parameter is an error (RFC 6749 §3.1).
var authzParams = []string{"response_type", "client_id", "redirect_uri", "scope", "state",
	"code_challenge", "code_challenge_method", "nonce", "prompt", "max_age", "login_hint",
	"response_mode", "display", "ui_locales", "claims_locales", "id_token_hint", "acr_values", "request", "request_uri",
	"dpop_jkt"}

// authzError is an error at the authorization endpoint: shown to the user
// when redirect is false, otherwise sent to the redirect URI.
type authzError struct {
	code, desc string
	redirect   bool
}

func pageErr(desc string) *authzError { return &authzError{desc: desc} }

func redirErr(code, desc string) *authzError {
	return &authzError{code: code, desc: desc, redirect: true}
}

// handleAuthorize is the authorization endpoint, RFC 6749 §3.1 and §4.1.1
// with PKCE (RFC 7636, S256 only) and OpenID Connect Core §3.1.2. GET and
// POST (form) requests are both accepted (OIDC Core §3.1.2.1); a POST with
// a "req" field is the login or consent form coming back.
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	t, err := s.tenant(ctx, r)
	if err != nil {
		s.errorPage(w, r, http.StatusNotFound, "Unknown tenant.")
		return
	}
	var vals url.Values
	if r.Method == http.MethodPost {
		if vals, err = readForm(r, s.cfg.MaxBodyBytes); err != nil {
			s.errorPage(w, r, http.StatusBadRequest, "The request is malformed.")
			return
		}
		if vals.Has("req") {
			s.resumeAuthorize(w, r, t, vals)
			return
		}
	} else {
		if vals, err = url.ParseQuery(r.URL.RawQuery); err != nil {
			s.errorPage(w, r, http.StatusBadRequest, "The request is malformed.")
			return
		}
	}
	vals, status, msg := s.resolvePushed(ctx, t, vals) // par.go
	if status != 0 {
		s.errorPage(w, r, status, msg)
		return
	}
	p, c, aerr := s.parseAuthorize(ctx, t, vals)
	if aerr != nil {
		s.authzFail(w, r, t, p, aerr)
		return
	}
	s.continueAuthorize(w, r, t, c, p, nil, nil)
}

// parseAuthorize checks an authorization request. The client and
// redirect_uri are checked first: until both are known good, errors are
// shown, never redirected (RFC 6749 §4.1.2.1, RFC 9700 §4.11).
func (s *Server) parseAuthorize(ctx context.Context, t Tenant, vals url.Values) (*pending, Client, *authzError) {
	c, redirect, aerr := s.authorizeClient(ctx, t, vals)
	if aerr != nil {
		return nil, Client{}, aerr
	}
	get := vals.Get
	p := &pending{ClientID: c.ID, RedirectURI: redirect, State: get("state"), MaxAge: -1}
	if len(p.State) > 2048 {
		p.State = ""
		return p, c, redirErr(CodeInvalidRequest, "state too long")
	}
	if aerr := checkAuthorizeFlow(p, c, get); aerr != nil {
		return p, c, aerr
	}
	if aerr := parseAuthorizeScope(p, c, get); aerr != nil {
		return p, c, aerr
	}
	return p, c, parseAuthorizeOIDC(p, get)
}

// authorizeClient checks that no parameter is repeated and finds the
// client and its registered redirect_uri; its errors are shown, never
// redirected.
func (s *Server) authorizeClient(ctx context.Context, t Tenant, vals url.Values) (Client, string, *authzError) {
	for k, v := range vals {
		if len(v) > 1 {
			if slices.Contains(authzParams, k) {
				return Client{}, "", pageErr("The parameter " + k + " is repeated.")
			}
			return Client{}, "", pageErr("A parameter is repeated.")
		}
	}
	clientID := vals.Get("client_id")
	if clientID == "" || len(clientID) > maxCredentialLen {
		return Client{}, "", pageErr("The request names no valid client.")
	}
	c, err := s.st.Client(ctx, t.ID, clientID)
	if err != nil || c.Disabled || c.Tenant != t.ID {
		return Client{}, "", pageErr("The client is unknown or disabled.")
	}
	redirect, ok := matchRedirect(c, vals.Get("redirect_uri"))
	if !ok {
		return Client{}, "", pageErr("The redirect URI is not registered for this client.")
	}
	return c, redirect, nil
}

// checkAuthorizeFlow checks the response type and mode, the client's grant
// and PKCE (p.Challenge).
func checkAuthorizeFlow(p *pending, c Client, get func(string) string) *authzError {
	// RFC 6749 §3.1.1: response_type=code only (RFC 9700 §2.1.2: no
	// implicit or hybrid flows).
	switch rt := get("response_type"); {
	case rt == "":
		return redirErr(CodeInvalidRequest, "missing response_type")
	case rt != "code":
		return redirErr(CodeUnsupportedResponseType, "only response_type=code is supported")
	}
	if rm := get("response_mode"); rm != "" && rm != "query" {
		return redirErr(CodeInvalidRequest, "only response_mode=query is supported")
	}
	if get("request") != "" || get("request_uri") != "" {
		return redirErr("request_not_supported", "request objects are not supported")
	}
	if !slices.Contains(c.GrantTypes, GrantAuthorizationCode) {
		return redirErr(CodeUnauthorizedClient, "client is not allowed to use the authorization code grant")
	}
	// RFC 7636 §4.4.1, RFC 9700 §2.1.1: PKCE is required, S256 only.
	p.Challenge = get("code_challenge")
	switch m := get("code_challenge_method"); {
	case p.Challenge == "":
		return redirErr(CodeInvalidRequest, "code_challenge required (PKCE, S256)")
	case m != "S256":
		return redirErr(CodeInvalidRequest, "transform algorithm not supported, use S256")
	case !validChallenge(p.Challenge):
		return redirErr(CodeInvalidRequest, "malformed code_challenge")
	}
	return nil
}

// parseAuthorizeScope sets p.Scopes: the requested scope within the
// client's (the client's when none is asked for).
func parseAuthorizeScope(p *pending, c Client, get func(string) string) *authzError {
	scope, err := ParseScope(get("scope"))
	if err != nil {
		return redirErr(CodeInvalidScope, "malformed scope")
	}
	if len(scope) == 0 {
		scope = c.Scopes
	}
	for _, sc := range scope {
		if !slices.Contains(c.Scopes, sc) {
			return redirErr(CodeInvalidScope, "requested scope is not allowed for this client")
		}
	}
	p.Scopes = scope
	return nil
}

// parseAuthorizeOIDC reads dpop_jkt and the OpenID Connect parameters
// (nonce, prompt, max_age, login_hint) into p.
func parseAuthorizeOIDC(p *pending, get func(string) string) *authzError {
	if p.DPoPJKT = get("dpop_jkt"); p.DPoPJKT != "" && !validJKT(p.DPoPJKT) { // dpop.go
		return redirErr(CodeInvalidRequest, "malformed dpop_jkt")
	}
	p.Nonce = get("nonce")
	if len(p.Nonce) > 512 {
		return redirErr(CodeInvalidRequest, "nonce too long")
	}
	if v := get("prompt"); v != "" {
		for pr := range strings.SplitSeq(v, " ") {
			switch pr {
			case "none", "login", "consent":
				if !slices.Contains(p.Prompt, pr) {
					p.Prompt = append(p.Prompt, pr)
				}
			default:
				return redirErr(CodeInvalidRequest, "unsupported prompt value")
			}
		}
		if slices.Contains(p.Prompt, "none") && len(p.Prompt) > 1 {
			return redirErr(CodeInvalidRequest, "prompt=none must be alone")
		}
	}
	if v := get("max_age"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return redirErr(CodeInvalidRequest, "malformed max_age")
		}
		p.MaxAge = n
	}
	p.LoginHint = get("login_hint")
	if len(p.LoginHint) > 255 {
		p.LoginHint = ""
	}
	return nil
}

// validChallenge: RFC 7636 §4.2, BASE64URL(SHA256(verifier)) is 43
// characters.
func validChallenge(s string) bool {
	if len(s) != 43 {
		return false
	}
	_, err := base64.RawURLEncoding.Strict().DecodeString(s)
	return err == nil
}

// matchRedirect finds the redirect URI to use (RFC 6749 §3.1.2.3): the
// presented one must equal a registered one exactly, except that a
// registered loopback IP redirect (http://127.0.0.1 or http://[::1]) matches
// any port (RFC 8252 §7.3). Without a presented one, a client with exactly
// one registered URI uses it.
func matchRedirect(c Client, presented string) (string, bool) {
	if presented == "" {
		if len(c.RedirectURIs) == 1 {
			return c.RedirectURIs[0], true
		}
		return "", false
	}
	if len(presented) > 2048 {
		return "", false
	}
	if slices.Contains(c.RedirectURIs, presented) {
		return presented, true
	}
	pu, err := url.Parse(presented)
	if err != nil || pu.Scheme != "http" || pu.Fragment != "" || pu.User != nil {
		return "", false
	}
	if h := pu.Hostname(); h != "127.0.0.1" && h != "::1" {
		return "", false
	}
	for _, reg := range c.RedirectURIs {
		ru, err := url.Parse(reg)
		if err != nil || ru.Scheme != "http" || ru.Hostname() != pu.Hostname() {
			continue
		}
		if ru.EscapedPath() == pu.EscapedPath() && ru.RawQuery == pu.RawQuery {
			return presented, true
		}
	}
	return "", false
}

// authzFail shows or redirects an authorization error.
func (s *Server) authzFail(w http.ResponseWriter, r *http.Request, t Tenant, p *pending, e *authzError) {
	if !e.redirect || p == nil {
		s.errorPage(w, r, http.StatusBadRequest, e.desc)
		return
	}
	q := url.Values{"error": {e.code}}
	if e.desc != "" {
		q.Set("error_description", e.desc)
	}
	s.redirectTo(w, r, t, p, q)
}

// redirectTo sends the authorization response to the client's redirect URI
// with state and, always, iss (RFC 9207 §2).
func (s *Server) redirectTo(w http.ResponseWriter, r *http.Request, t Tenant, p *pending, q url.Values) {
	u, err := url.Parse(p.RedirectURI)
	if err != nil {
		s.errorPage(w, r, http.StatusBadRequest, "The redirect URI is malformed.")
		return
	}
	merged := u.Query()
	for k, v := range q {
		merged[k] = v
	}
	if p.State != "" {
		merged.Set("state", p.State)
	}
	merged.Set("iss", s.Issuer(t.ID))
	u.RawQuery = merged.Encode()
	h := w.Header()
	h.Set("Location", u.String())
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	status := http.StatusFound
	if r.Method == http.MethodPost {
		status = http.StatusSeeOther
	}
	w.WriteHeader(status)
}

// continueAuthorize decides the next step for a checked request: the login
// page, the consent page, or the code. sess and u are set when the user
// has just signed in.
func (s *Server) continueAuthorize(w http.ResponseWriter, r *http.Request, t Tenant, c Client, p *pending, sess *session, u *User) {
	ctx := r.Context()
	now := s.cfg.Now()
	if sess == nil {
		sess, u = s.readSession(ctx, r, t.ID, now)
	}
	none := slices.Contains(p.Prompt, "none")
	needLogin := sess == nil ||
		(slices.Contains(p.Prompt, "login") && !p.LoginDone) ||
		// OIDC Core §3.1.2.1: max_age=0 means the same as prompt=login; a
		// sign-in in this very flow satisfies both.
		(p.MaxAge >= 0 && !p.LoginDone && now.Unix()-sess.AuthTime >= p.MaxAge)
	if needLogin {
		if none {
			s.authzFail(w, r, t, p, redirErr(CodeLoginRequired, "the user is not signed in"))
			return
		}
		s.showLogin(w, r, t, c, p, "authorize", "")
		return
	}
	consented := p.Consented && p.UserID == u.ID
	if !consented && !slices.Contains(p.Prompt, "consent") && !nativeUnproven(c, p.RedirectURI) {
		cs, err := s.users.Consent(ctx, t.ID, u.ID, c.ID)
		consented = err == nil && (cs.ExpiresAt.IsZero() || now.Before(cs.ExpiresAt)) && subset(p.Scopes, cs.Scopes)
	}
	if !consented {
		if none {
			s.authzFail(w, r, t, p, redirErr(CodeConsentRequired, "the user has not approved this client"))
			return
		}
		p.UserID = u.ID
		s.showConsent(w, r, t, c, p, u, "authorize")
		return
	}
	if !s.decideAuthorize(w, r, t, c, p, u, now) { // policy.go
		return
	}
	code, err := s.newCode(ctx, t.ID, p, u.ID, time.Unix(sess.AuthTime, 0), now)
	if err != nil {
		s.authzFail(w, r, t, p, redirErr(CodeServerError, "the code could not be issued"))
		return
	}
	s.redirectTo(w, r, t, p, url.Values{"code": {code}})
}

// nativeUnproven reports whether a request comes from a public client
// whose identity its redirect URI does not prove: a loopback or
// private-use-scheme redirect, which any app on the device can claim.
// RFC 8252 §8.6: such a request is processed as if no earlier request had
// been approved, so a remembered consent does not authorise it silently
// (the user approves again; prompt=none gets consent_required). An https
// redirect URI (a web app, or a native app's claimed https link) proves
// the client the way a confidential client's secret does.
func nativeUnproven(c Client, redirectURI string) bool {
	if !c.Public {
		return false
	}
	u, err := url.Parse(redirectURI)
	return err != nil || u.Scheme != "https"
}

func subset(want, have []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func (s *Server) sealPending(w http.ResponseWriter, r *http.Request, t Tenant, p *pending, kind string) (string, error) {
	csrf, err := s.csrfToken(w, r, t.ID)
	if err != nil {
		return "", err
	}
	p.CSRF = csrf
	p.Expires = s.cfg.Now().Add(pendingTTL).Unix()
	return s.sealFlow(r.Context(), t.ID, s.flow.browser, "", flowPrefixV2, p, pendingAAD(t.ID, kind))
}

// openPending opens a form's sealed request and checks its expiry and its
// CSRF binding to the browser.
func (s *Server) openPending(r *http.Request, t Tenant, vals url.Values, kind string) (*pending, bool) {
	var p pending
	if s.openFlow(r.Context(), t.ID, s.flow.browser, "", flowPrefixV2, vals.Get("req"), pendingAAD(t.ID, kind), &p) != nil {
		return nil, false
	}
	if s.cfg.Now().Unix() >= p.Expires || !csrfMatches(r, p.CSRF) {
		return nil, false
	}
	return &p, true
}

func (s *Server) formAction(t Tenant, kind string) string {
	if kind == "device" {
		return s.Issuer(t.ID) + "/device"
	}
	return s.Issuer(t.ID) + "/oauth2/authorize"
}

func (s *Server) showLogin(w http.ResponseWriter, r *http.Request, t Tenant, c Client, p *pending, kind, msg string) {
	req, err := s.sealPending(w, r, t, p, kind)
	if err != nil {
		s.errorPage(w, r, http.StatusServiceUnavailable, "Please try again.")
		return
	}
	status := http.StatusOK
	if msg != "" {
		status = http.StatusUnauthorized
	}
	s.renderPage(w, r, status, "login.html", pageData{Title: "Sign in", Error: msg, ClientName: clientName(c),
		Username: p.LoginHint, Action: s.formAction(t, kind), Req: req})
}

func (s *Server) showConsent(w http.ResponseWriter, r *http.Request, t Tenant, c Client, p *pending, u *User, kind string) {
	req, err := s.sealPending(w, r, t, p, kind)
	if err != nil {
		s.errorPage(w, r, http.StatusServiceUnavailable, "Please try again.")
		return
	}
	data := pageData{Title: "Allow access?", ClientName: clientName(c),
		Username: u.Username, Action: s.formAction(t, kind), Req: req, Scopes: p.Scopes}
	if kind == "device" && p.UserCode != "" {
		// RFC 8628 §5.4: let the user compare the code with the device's.
		data.UserCode = formatUserCode(p.UserCode)
	}
	s.renderPage(w, r, http.StatusOK, "consent.html", data)
}

func clientName(c Client) string {
	if c.Name != "" {
		return c.Name
	}
	return c.ID
}

// resumeAuthorize handles the login and consent forms.
func (s *Server) resumeAuthorize(w http.ResponseWriter, r *http.Request, t Tenant, vals url.Values) {
	ctx := r.Context()
	p, ok := s.openPending(r, t, vals, "authorize")
	if !ok {
		s.errorPage(w, r, http.StatusBadRequest, "This sign-in form has expired or was not issued to this browser. Start again from the application.")
		return
	}
	c, err := s.st.Client(ctx, t.ID, p.ClientID)
	if err != nil || c.Disabled {
		s.errorPage(w, r, http.StatusBadRequest, "The client is unknown or disabled.")
		return
	}
	now := s.cfg.Now()
	switch vals.Get("action") {
	case "login":
		if !s.signinAllowed(r, t.ID, vals.Get("username"), now) {
			s.metrics.signinFailure(r.Context(), "rate_limited")
			s.showLogin(w, r, t, c, p, "authorize", "Too many attempts. Wait a minute and try again.")
			return
		}
		u, err := s.checkPassword(ctx, t.ID, vals.Get("username"), vals.Get("password"))
		if errors.Is(err, errHashBusy) {
			s.showLogin(w, r, t, c, p, "authorize", "Too many attempts. Wait a minute and try again.")
			return
		}
		if err != nil {
			if errors.Is(err, errBadLogin) {
				p.LoginHint = vals.Get("username")
				s.showLogin(w, r, t, c, p, "authorize", "Invalid username or password.")
				return
			}
			s.errorPage(w, r, http.StatusServiceUnavailable, "Please try again.")
			return
		}
		sess, err := s.startSession(r.Context(), w, t.ID, u, now)
		if err != nil {
			s.errorPage(w, r, http.StatusServiceUnavailable, "Please try again.")
			return
		}
		p.LoginDone = true
		s.continueAuthorize(w, r, t, c, p, sess, &u)
	case "approve", "deny":
		sess, u := s.readSession(ctx, r, t.ID, now)
		if sess == nil || u.ID != p.UserID {
			s.showLogin(w, r, t, c, p, "authorize", "")
			return
		}
		if vals.Get("action") == "deny" {
			s.authzFail(w, r, t, p, redirErr(CodeAccessDenied, "the user denied the request"))
			return
		}
		var exp time.Time
		if s.cfg.ConsentTTL > 0 {
			exp = now.Add(s.cfg.ConsentTTL)
		}
		if err := s.grantW.RememberConsent(ctx, t.ID, u.ID, c.ID, p.Scopes, exp); err != nil {
			s.authzFail(w, r, t, p, redirErr(CodeTemporarilyUnavailable, "consent could not be saved, try again"))
			return
		}
		p.Consented = true
		s.continueAuthorize(w, r, t, c, p, sess, u)
	default:
		s.errorPage(w, r, http.StatusBadRequest, "The form is malformed.")
	}
}
