package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/policy"
	"github.com/tallyauth/tally/revocation"
)

// SidecarConfig configures a standalone checker (tally gateway-auth) next
// to a gateway, possibly in another region than the token service.
type SidecarConfig struct {
	// Issuer is the tenant's issuer URL; Tenant its id.
	Issuer, Tenant string
	// ServerURL is a node's base URL for the event stream (revocations).
	ServerURL string
	// Audience is the audience external tokens must carry.
	Audience string
	// ClientID and ClientSecret are the gateway's confidential client
	// (allowed token exchange): introspection of opaque tokens, the rules
	// and the phantom exchange.
	ClientID, ClientSecret string
	// RulesInterval is how often the rules are fetched; default 5s.
	RulesInterval time.Duration
	HTTPClient    *http.Client
	Logger        *slog.Logger
}

// Sidecar is a Checker backed by the resource-server SDK.
type Sidecar struct {
	*Checker
	cfg     SidecarConfig
	watcher *revocation.Watcher
	v       *revocation.Verifier
	rules   atomic.Pointer[sidecarRules]
	engine  *policy.Engine

	mu      sync.Mutex
	phantom map[phantomKey]phantomEntry
}

type sidecarRules struct {
	Rules
	Policies []policy.Spec `json:"policies,omitempty"`
}

type phantomKey struct {
	token    [32]byte
	audience string
}

type phantomEntry struct {
	jwt string
	exp time.Time
}

// NewSidecar builds the sidecar; Start begins following revocations and
// rules.
func NewSidecar(cfg SidecarConfig) (*Sidecar, error) {
	if cfg.Issuer == "" || cfg.Tenant == "" || cfg.ServerURL == "" || cfg.Audience == "" || cfg.ClientID == "" || cfg.ClientSecret == "" {
		return nil, errors.New("gateway: sidecar needs issuer, tenant, server, audience and client credentials")
	}
	if cfg.RulesInterval <= 0 {
		cfg.RulesInterval = 5 * time.Second
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w, err := revocation.NewWatcher(revocation.WatcherConfig{Issuer: cfg.Issuer, Tenant: cfg.Tenant, ServerURL: cfg.ServerURL,
		ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	v, err := revocation.NewVerifier(revocation.Config{Issuer: cfg.Issuer, Audience: cfg.Audience, Watcher: w,
		ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, HTTPClient: cfg.HTTPClient})
	if err != nil {
		return nil, err
	}
	s := &Sidecar{cfg: cfg, watcher: w, v: v, phantom: map[phantomKey]phantomEntry{}}
	s.engine = policy.NewEngine(func(string) (uint64, []policy.Spec) {
		r := s.rules.Load()
		if r == nil {
			return 0, nil
		}
		return r.Version, r.Policies
	}, cfg.Logger.With("component", "policy"))
	s.Checker = &Checker{
		Rules: func(tenant string) (Rules, bool) {
			r := s.rules.Load()
			if tenant != cfg.Tenant || r == nil {
				return Rules{}, false
			}
			return r.Rules, true
		},
		Verify:  s.verify,
		Phantom: s.exchange,
		Policy:  s.engine,
		Realm:   cfg.Issuer,
	}
	return s, nil
}

// Start starts the watcher and the rules poller; it returns once the
// revocation set is synced and the rules were fetched once.
func (s *Sidecar) Start(ctx context.Context) error {
	s.watcher.Start()
	if err := s.watcher.WaitSynced(ctx); err != nil {
		return fmt.Errorf("gateway: revocation set not synced: %w", err)
	}
	if err := s.fetchRules(ctx); err != nil {
		return err
	}
	go func() {
		t := time.NewTicker(s.cfg.RulesInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := s.fetchRules(ctx); err != nil {
					s.cfg.Logger.Warn("gateway rules fetch failed; keeping the last ones", "err", err)
				}
			}
		}
	}()
	return nil
}

// Stop stops the watcher.
func (s *Sidecar) Stop() { s.watcher.Stop() }

func (s *Sidecar) fetchRules(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.Issuer+"/gateway/rules", nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth(url.QueryEscape(s.cfg.ClientID), url.QueryEscape(s.cfg.ClientSecret))
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("gateway: rules: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("gateway: rules: status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var r sidecarRules
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&r); err != nil {
		return fmt.Errorf("gateway: rules: %w", err)
	}
	s.rules.Store(&r)
	return nil
}

func (s *Sidecar) verify(ctx context.Context, _ string, token string) (*Identity, error) {
	c, err := s.v.Verify(ctx, token)
	switch {
	case errors.Is(err, revocation.ErrStale) || errors.Is(err, revocation.ErrUnavailable):
		return nil, errors.Join(ErrUnavailable, err)
	case err != nil:
		return nil, ErrInvalidToken
	}
	return &Identity{Subject: c.Subject, ClientID: c.ClientID, Actor: c.Actor, JTI: c.JTI, Scopes: c.Scopes, ExpiresAt: c.ExpiresAt, Token: token,
		JKT: c.JKT, X5T: c.Cnf.X5TS256}, nil
}

// exchange obtains the phantom JWT by RFC 8693 token exchange, cached per
// token and audience until shortly before it expires (a revocation of the
// token is caught by verify before the cache is consulted).
func (s *Sidecar) exchange(ctx context.Context, _ string, id *Identity, audience string) (string, error) {
	k := phantomKey{sha256.Sum256([]byte(id.Token)), audience}
	now := time.Now()
	s.mu.Lock()
	e, ok := s.phantom[k]
	if len(s.phantom) > 100000 {
		s.phantom = map[phantomKey]phantomEntry{}
	}
	s.mu.Unlock()
	if ok && now.Before(e.exp) {
		return e.jwt, nil
	}
	form := url.Values{"grant_type": {issuance.GrantTokenExchange}, "subject_token": {id.Token},
		"subject_token_type": {issuance.TokenTypeAccessToken}, "audience": {audience}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.Issuer+"/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(s.cfg.ClientID), url.QueryEscape(s.cfg.ClientSecret))
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
		Error       string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&out); err != nil {
		return "", err
	}
	switch {
	case resp.StatusCode == http.StatusBadRequest && out.Error == "invalid_request":
		return "", ErrInvalidToken
	case resp.StatusCode != http.StatusOK || out.AccessToken == "":
		return "", fmt.Errorf("gateway: token exchange: status %d %s", resp.StatusCode, out.Error)
	}
	exp := now.Add(time.Duration(out.ExpiresIn)*time.Second - 30*time.Second)
	s.mu.Lock()
	s.phantom[k] = phantomEntry{jwt: out.AccessToken, exp: exp}
	s.mu.Unlock()
	return out.AccessToken, nil
}

// Handler serves GET /gateway/check (and {issuer path}/gateway/check),
// the ext_authz gRPC API and /healthz.
func (s *Sidecar) Handler(trusted []netipPrefix) http.Handler {
	mux := http.NewServeMux()
	fa := s.ForwardAuth(func(*http.Request) string { return s.cfg.Tenant }, trusted)
	mux.Handle("GET /gateway/check", fa)
	mux.Handle("GET /t/{tenant}/gateway/check", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("tenant") != s.cfg.Tenant {
			http.NotFound(w, r)
			return
		}
		fa.ServeHTTP(w, r)
	}))
	path, h := ExtAuthzHandler(s.Checker, s.cfg.Tenant)
	mux.Handle(path, h)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.watcher.Stale() || s.rules.Load() == nil {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}
