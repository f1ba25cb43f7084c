package issuance

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Cookie names. Both are scoped to the tenant's path, HttpOnly,
// SameSite=Lax and Secure unless Config.InsecureCookies.
const (
	sessionCookie = "tally_session"
	csrfCookie    = "tally_csrf"
)

// session is the sealed content of the session cookie: no write is needed
// per page view, and the cookie is useless on another tenant (the tenant is
// in the associated data).
type session struct {
	UserID   string `json:"u"`
	AuthTime int64  `json:"a"` // unix seconds
	Expires  int64  `json:"e"` // unix seconds
}

func sessionAAD(tenant string) string { return "session|" + tenant }

func (s *Server) cookiePath(tenant string) string { return "/t/" + url.PathEscape(tenant) + "/" }

func (s *Server) setCookie(w http.ResponseWriter, tenant, name, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{
		Name:     name,
		Value:    value,
		Path:     s.cookiePath(tenant),
		MaxAge:   int(maxAge.Seconds()),
		HttpOnly: true,
		Secure:   !s.cfg.InsecureCookies,
		SameSite: http.SameSiteLaxMode,
	})
}

// readSession returns the session of the request's cookie with its user,
// or nil when there is none, it does not open, has expired, or its user is
// gone or inactive.
func (s *Server) readSession(ctx context.Context, r *http.Request, tenant string, now time.Time) (*session, *User) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, nil
	}
	var sess session
	if s.openFlow(ctx, tenant, s.flow.browser, "", flowPrefixV2, c.Value, sessionAAD(tenant), &sess) != nil { // seal_rotating.go
		return nil, nil
	}
	if now.Unix() >= sess.Expires {
		return nil, nil
	}
	u, err := s.users.User(ctx, tenant, sess.UserID)
	if err != nil || !u.Active() {
		return nil, nil
	}
	if !u.SessionsRevokedAt.IsZero() && sess.AuthTime <= u.SessionsRevokedAt.Unix() {
		return nil, nil // an admin ended the user's sessions (RevokeUserAccess)
	}
	return &sess, &u
}

// startSession sets a new session cookie for u.
func (s *Server) startSession(ctx context.Context, w http.ResponseWriter, tenant string, u User, now time.Time) (*session, error) {
	sess := &session{UserID: u.ID, AuthTime: now.Unix(), Expires: now.Add(s.cfg.SessionTTL).Unix()}
	v, err := s.sealFlow(ctx, tenant, s.flow.browser, "", flowPrefixV2, sess, sessionAAD(tenant))
	if err != nil {
		return nil, err
	}
	s.setCookie(w, tenant, sessionCookie, v, s.cfg.SessionTTL)
	return sess, nil
}

// csrfToken returns the browser's CSRF value, setting the cookie if there is
// none. The value is bound into every sealed form (pending.CSRF) and
// compared with the cookie when the form comes back: a cross-site form post
// carries no SameSite=Lax cookie, and a forged form cannot carry a matching
// sealed value.
func (s *Server) csrfToken(w http.ResponseWriter, r *http.Request, tenant string) (string, error) {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 43 {
		if _, err := base64.RawURLEncoding.Strict().DecodeString(c.Value); err == nil {
			return c.Value, nil
		}
	}
	var b [32]byte
	if _, err := io.ReadFull(s.cfg.Rand, b[:]); err != nil {
		return "", err
	}
	v := base64.RawURLEncoding.EncodeToString(b[:])
	s.setCookie(w, tenant, csrfCookie, v, s.cfg.SessionTTL)
	return v, nil
}

func csrfMatches(r *http.Request, want string) bool {
	c, err := r.Cookie(csrfCookie)
	return err == nil && want != "" && subtle.ConstantTimeCompare([]byte(c.Value), []byte(want)) == 1
}

var errBadLogin = errors.New("invalid username or password")

// checkPassword finds an active user by username and checks the password.
// An unknown user costs one hash too, so timing does not reveal which
// usernames exist.
func (s *Server) checkPassword(ctx context.Context, tenant, username, password string) (User, error) {
	if username == "" || password == "" || len(username) > 255 || len(password) > MaxPasswordLen {
		s.metrics.signinFailure(ctx, "bad_credentials")
		return User{}, errBadLogin
	}
	release, ok := s.acquireHash(ctx)
	if !ok {
		s.metrics.signinFailure(ctx, "rate_limited")
		return User{}, errHashBusy
	}
	defer release()
	u, err := s.users.UserByUsername(ctx, tenant, username)
	switch {
	case errors.Is(err, ErrNotFound):
		s.recordFailure(ctx, tenant, username, "", false)
		s.dummyHash.Verify(password)
		s.metrics.signinFailure(ctx, "bad_credentials")
		return User{}, errBadLogin
	case err != nil:
		return User{}, errUnavailable("user lookup failed", err)
	}
	if len(u.Password.Hash) == 0 {
		s.recordFailure(ctx, tenant, username, u.ID, false)
		// A user without a password costs one hash too (issue 13): its
		// refusal takes as long as a wrong password's.
		s.dummyHash.Verify(password)
		s.metrics.signinFailure(ctx, "bad_credentials")
		return User{}, errBadLogin
	}
	if !u.Password.Verify(password) || !u.Active() {
		s.recordFailure(ctx, tenant, username, u.ID, false)
		s.metrics.signinFailure(ctx, "bad_credentials")
		return User{}, errBadLogin
	}
	return u, nil
}

// limiters rate-limits by key (client IP, session) with a token bucket per
// key. The map is cleared when it grows past max, which only ever gives a
// key a fresh bucket: it bounds memory, not the limit's intent.
type limiters struct {
	mu    sync.Mutex
	every rate.Limit
	burst int
	max   int
	m     map[string]*rate.Limiter
}

func newLimiters(perMinute, burst int) *limiters {
	return &limiters{every: rate.Limit(float64(perMinute) / 60), burst: burst, max: 100_000, m: make(map[string]*rate.Limiter)}
}

func (l *limiters) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.m[key]
	if lim == nil {
		if len(l.m) >= l.max {
			clear(l.m)
		}
		lim = rate.NewLimiter(l.every, l.burst)
		l.m[key] = lim
	}
	return lim.AllowN(now, 1)
}

// clientIP is the connection's address, or the client address a trusted
// proxy reported (RateLimits.TrustedProxies; other peers' headers are ignored).
func clientIP(r *http.Request) string {
	if gi := ctxGuardInfo(r.Context()); gi != nil {
		return gi.ip // perhaps from a trusted proxy's X-Forwarded-For (ratelimit.go)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return strings.TrimSpace(host)
}
