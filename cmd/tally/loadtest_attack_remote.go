package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/loadtest"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/revocation"
	"github.com/tallyauth/tally/revocation/eventwire/eventsv1"
	"github.com/tallyauth/tally/revocation/eventwire/eventsv1/eventsv1connect"
)

// runRemoteAttack is "tally loadtest attack --target …": the drill against
// a deployed cluster, over HTTP only. It creates the drill's tenant and
// what the scenarios need in it through the admin API, waits until every
// target serves the last client created, follows the tenant's event log
// for the alerts, runs the scenarios, and deletes the tenant (with its
// users and clients) whatever happened.
func runRemoteAttack(ctx context.Context, e env, g *adminGlobals, targetURLs []string, tenant string, list []string, floodLimit int, cmdline, output string, set func(*loadtest.AttackConfig)) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "tally loadtest attack: "+format+"\n", a...)
		return 1
	}
	for i, t := range targetURLs {
		u, err := url.Parse(t)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			fmt.Fprintf(e.stderr, "tally loadtest attack: --target must be a node's http:// or https:// base URL, got %q\n", t)
			return 2
		}
		targetURLs[i] = strings.TrimRight(t, "/")
	}
	if g.server == "" && e.getenv != nil {
		g.server = e.getenv("TALLY_SERVER")
	}
	if g.server == "" {
		g.server = targetURLs[0]
	}
	if tenant == "" {
		tenant = "attack-drill-" + strings.ToLower(rand.Text()[:8])
	}
	s, err := newAdminSession(g, e)
	if err != nil {
		return fail("%v", err)
	}
	defer s.close()
	admin, err := s.client()
	if err != nil {
		return fail("%v", err)
	}
	token, _ := g.resolveToken(s.getenv)

	fmt.Fprintf(e.stderr, "creating tenant %s for the drill through %s …\n", tenant, g.server)
	if _, err := admin.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: tenant, DisplayName: "tally loadtest attack drill"})); err != nil {
		return fail("creating the drill's tenant: %v", err)
	}
	defer func() {
		// The tenant goes with everything in it, even after a failure or
		// an interrupt.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := admin.DeleteTenant(dctx, connect.NewRequest(&adminv1.DeleteTenantRequest{Id: tenant})); err != nil {
			fmt.Fprintf(e.stderr, "tally loadtest attack: deleting the drill's tenant %s: %v (delete it with tally admin tenant delete)\n", tenant, err)
		} else {
			fmt.Fprintf(e.stderr, "deleted tenant %s\n", tenant)
		}
	}()
	cfg, err := attackPrepare(ctx, admin, tenant)
	if err != nil {
		return fail("%v", err)
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	var targets []loadtest.Target
	for _, t := range targetURLs {
		base := t + "/t/" + tenant
		targets = append(targets, loadtest.Target{Issuer: base, TokenURL: base + "/oauth2/token", IntrospectURL: base + "/oauth2/introspect", AuthorizeURL: base + "/oauth2/authorize"})
	}
	// Every target has replicated the set-up once it grants a token to the
	// last client created.
	if err := waitServed(ctx, hc, targets, cfg.Flooder, 60*time.Second); err != nil {
		return fail("%v", err)
	}
	feed := &eventAlerts{}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	go feed.follow(fctx, eventsv1connect.NewEventsServiceClient(hc, targetURLs[0], connect.WithInterceptors(bearerInterceptor(token))), tenant)
	cfg.Targets, cfg.FloodPerMinute, cfg.Alerted, cfg.Timeout = targets, floodLimit, feed.alerted, 10*time.Second
	set(&cfg)
	return runAttackScenarios(ctx, e, cfg, list, attackOutput{Command: cmdline, Nodes: len(targets), Tenant: tenant}, output)
}

// waitServed waits until every target grants c a client_credentials token.
func waitServed(ctx context.Context, hc *http.Client, targets []loadtest.Target, c loadtest.ClientCreds, within time.Duration) error {
	deadline := time.Now().Add(within)
	for _, t := range targets {
		for {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, t.TokenURL, strings.NewReader("grant_type=client_credentials"))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.SetBasicAuth(url.QueryEscape(c.ID), url.QueryEscape(c.Secret))
			res, err := hc.Do(req)
			if err == nil {
				res.Body.Close()
				if res.StatusCode == http.StatusOK {
					break
				}
				err = fmt.Errorf("HTTP %d", res.StatusCode)
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("%s does not serve the drill's clients yet: %v", t.Issuer, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

func bearerInterceptor(token string) connect.Interceptor { return bearer{token} }

type bearer struct{ token string }

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+b.token)
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+b.token)
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// eventAlerts are the security alerts of the drill's tenant as the drill
// received them from the event log.
type eventAlerts struct {
	mu   sync.Mutex
	seen []seenAlert
}

type seenAlert struct {
	kind string
	at   time.Time
}

// follow watches the tenant's event log from its start until ctx ends,
// reconnecting after an error, and records each security alert with the
// time it arrived (the SETs are not verified: the drill only times them).
func (f *eventAlerts) follow(ctx context.Context, c eventsv1connect.EventsServiceClient, tenant string) {
	from := uint64(0)
	for ctx.Err() == nil {
		st, err := c.WatchRevocations(ctx, connect.NewRequest(&eventsv1.WatchRevocationsRequest{Tenant: tenant, FromSequence: from}))
		if err == nil {
			for st.Receive() {
				ev := st.Msg().GetEvent()
				if ev == nil {
					continue
				}
				from = ev.GetSequence() + 1
				if kind, ok := setAlertKind(ev.GetSet()); ok {
					f.mu.Lock()
					f.seen = append(f.seen, seenAlert{kind, time.Now()})
					f.mu.Unlock()
				}
			}
			st.Close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// setAlertKind is the alert kind of a security-alert SET.
func setAlertKind(set string) (string, bool) {
	parts := strings.Split(set, ".")
	if len(parts) != 3 {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", false
	}
	var claims revocation.SETClaims
	if json.Unmarshal(b, &claims) != nil {
		return "", false
	}
	d, ok := claims.Events[revocation.EventSecurityAlert]
	if !ok || d.Alert == nil {
		return "", false
	}
	return d.Alert.Kind, true
}

// alerted reports when the first alert of kind arrived at or after since.
func (f *eventAlerts) alerted(_ context.Context, kind string, since time.Time) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.seen {
		if a.kind == kind && !a.at.Before(since) {
			return a.at, true
		}
	}
	return time.Time{}, false
}
