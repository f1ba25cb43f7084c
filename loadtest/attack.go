package loadtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"html"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Attack scenarios (issue 13): an attack runs against every target at once
// (spread round-robin over the nodes of a cluster) while real users of the
// same tenant go on signing in or taking tokens, and the run reports side
// by side what the attacker got through, how soon the service reacted,
// and what the real users saw before and during the attack.
//
// The attacking and real addresses are carried in X-Forwarded-For: the
// targets must trust the load generator as a proxy (tally:
// --trusted-proxies 127.0.0.1/32), as they would trust their load balancer.
const (
	// AttackStuffing is credential stuffing: wrong passwords for many
	// accounts (existing and not) from many addresses in many subnets.
	AttackStuffing = "stuffing"
	// AttackSpray is one account attacked from many addresses while its
	// owner signs in from their own.
	AttackSpray = "spray"
	// AttackDeviceGuess is user-code guessing at the device verification
	// page (RFC 8628 §5.1) by a signed-in attacker from many addresses.
	AttackDeviceGuess = "device-guess"
	// AttackIntrospectGuess is token guessing at the introspection
	// endpoint by a resource server's credentials.
	AttackIntrospectGuess = "introspect-guess"
	// AttackTokenFlood is one client asking for tokens as fast as it can
	// on every node; the run measures how far the cluster-wide per-client
	// budget is overshot.
	AttackTokenFlood = "token-flood"
)

// AttackScenarios are every attack scenario, in the order they run.
var AttackScenarios = []string{AttackStuffing, AttackSpray, AttackDeviceGuess, AttackIntrospectGuess, AttackTokenFlood}

// ClientCreds are a confidential client's credentials.
type ClientCreds struct{ ID, Secret string }

// AttackConfig is what the attack scenarios need.
type AttackConfig struct {
	// Targets are the nodes (one issuer each, or one issuer behind several
	// addresses); the attack and the real users spread over them.
	Targets []Target
	// Flow is the public client the real users sign in to and the users
	// (at least 40; Users[0] is the spray's victim).
	Flow UserFlow
	// Attacker is an account the attacker owns (device-guess signs in
	// with it).
	Attacker User
	// Client is a confidential client (introspect-guess guesses with its
	// credentials); Flooder another (token-flood floods as it).
	Client, Flooder ClientCreds
	// Bystander is another confidential client of the tenant, taking
	// tokens from the attacker's address during token-flood.
	Bystander ClientCreds
	// FloodPerMinute is Flooder's cluster-wide budget at the token
	// endpoint (token-flood's overshoot is measured against it).
	FloodPerMinute int
	// Duration is each phase's length: real users alone, then under attack.
	Duration time.Duration
	// Extend, when positive, lets a phase run past Duration, by at most
	// Extend, until what it is there to show happened: the real users
	// finished an attempt, and (attack phase) the victim finished one,
	// the attack met its first throttled answer and, with Alerted, its
	// alert was seen (not waited for spray: the account's per-network
	// budget throttles a spray at once, and its alert needs more wrong
	// passwords checked a minute than may then come). On a slow or loaded machine a fixed phase can end
	// before the service had the attempts to react to; an extended run's
	// figures are over the phases' actual length. Zero: fixed phases.
	Extend time.Duration
	// Attackers are the concurrent attacking requests; RealUsers the
	// concurrent real users.
	Attackers, RealUsers int
	// Sources is how many addresses the attack comes from (in Sources/8+1
	// /24 subnets).
	Sources int
	// Alerted, when set, reports the first security alert of kind seen
	// at or after since (the SIEM feed); the run polls it.
	Alerted func(ctx context.Context, kind string, since time.Time) (time.Time, bool)
	// Timeout bounds each HTTP request.
	Timeout time.Duration
}

// AlertKinds name, per scenario, the security alert that detects it.
var AlertKinds = map[string]string{
	AttackStuffing:        "credential_stuffing",
	AttackSpray:           "credential_stuffing",
	AttackDeviceGuess:     "user_code_guessing",
	AttackIntrospectGuess: "token_guessing",
	AttackTokenFlood:      "rate_limit_exceeded",
}

// UserFigures are the real users' (or the bystander client's) results.
type UserFigures struct {
	Attempts    int64   `json:"attempts"`
	OK          int64   `json:"ok"`
	SuccessRate float64 `json:"success_rate"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	// Failures counts the failed attempts by outcome.
	Failures map[string]int64 `json:"failures,omitempty"`
}

// AttackResult is one attack scenario's run.
type AttackResult struct {
	Scenario        string  `json:"scenario"`
	Targets         int     `json:"targets"`
	DurationSeconds float64 `json:"duration_seconds"`
	Sources         int     `json:"sources"`
	// Attempts the attacker made; Throttled were refused for their rate
	// (429, slow_down, "too many attempts"); Checked were answered on
	// their merits (a wrong password, an unknown code, an inactive
	// token); Succeeded got what the attacker wanted (a session, a
	// device, an active token; token-flood: a token).
	Attempts  int64 `json:"attack_attempts"`
	Throttled int64 `json:"attack_throttled"`
	Checked   int64 `json:"attack_checked"`
	Succeeded int64 `json:"attack_succeeded"`
	// CheckedPerSourceMinute is what one attacking address got checked
	// per minute, on average.
	CheckedPerSourceMinute float64 `json:"checked_per_source_per_minute"`
	// FirstThrottleSeconds is the time from the attack's start to its
	// first throttled answer (-1: never throttled).
	FirstThrottleSeconds float64 `json:"first_throttle_seconds"`
	// AlertSeconds is the time from the attack's start to the first
	// security alert naming it in the SIEM feed (-1: none seen).
	AlertKind    string  `json:"alert_kind,omitempty"`
	AlertSeconds float64 `json:"alert_seconds"`
	// Baseline are the real users alone, Users the real users during the
	// attack (same users, same load). Victim is the spray's target account
	// signing in from its own address during the attack.
	Baseline UserFigures  `json:"users_baseline"`
	Users    UserFigures  `json:"users_during_attack"`
	Victim   *UserFigures `json:"victim,omitempty"`
	// token-flood: the budget, what was let through per minute over the
	// whole attack and over its second half (after the bursts), and
	// Overshoot = granted / (budget over the attack + every node's burst)
	// - 1 (≤ 0: the limit held).
	LimitPerMinute          int     `json:"limit_per_minute,omitempty"`
	GrantedPerMinute        float64 `json:"granted_per_minute,omitempty"`
	SteadyGrantedPerMinute  float64 `json:"steady_granted_per_minute,omitempty"`
	Overshoot               float64 `json:"overshoot,omitempty"`
	SteadyOvershoot         float64 `json:"steady_overshoot,omitempty"`
	BurstAllowancePerTarget int     `json:"burst_per_target,omitempty"`
}

// Validate reports the first problem with c for scenario, or nil.
func (c AttackConfig) Validate(scenario string) error {
	if len(c.Targets) == 0 {
		return errors.New("loadtest: no target")
	}
	if c.Duration <= 0 || c.Attackers < 1 || c.RealUsers < 1 || c.Sources < 1 || c.Timeout <= 0 {
		return errors.New("loadtest: duration, attackers, real users, sources and timeout must be positive")
	}
	if c.Extend < 0 {
		return errors.New("loadtest: extend must not be negative")
	}
	if err := c.Flow.Validate(); err != nil {
		return err
	}
	if len(c.Flow.Users) < 40 {
		return errors.New("loadtest: an attack run needs at least 40 real users")
	}
	switch scenario {
	case AttackStuffing, AttackSpray:
	case AttackDeviceGuess:
		if c.Attacker.Username == "" {
			return errors.New("loadtest: device-guess needs an attacker account")
		}
	case AttackIntrospectGuess:
		if c.Client.ID == "" {
			return errors.New("loadtest: introspect-guess needs a client")
		}
	case AttackTokenFlood:
		if c.Flooder.ID == "" || c.Bystander.ID == "" || c.FloodPerMinute < 1 {
			return errors.New("loadtest: token-flood needs a client, a bystander client and the client's budget")
		}
	default:
		return fmt.Errorf("loadtest: unknown attack scenario %q", scenario)
	}
	return nil
}

// xffTransport sends every request as if a proxy forwarded it for ip.
type xffTransport struct {
	base http.RoundTripper
	ip   string
}

func (t xffTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Forwarded-For", t.ip)
	return t.base.RoundTrip(r)
}

// attackSource is the i-th attacking address: 198.18.0.0/15 (RFC 2544
// benchmarking), eight addresses per /24.
func attackSource(i int) string { return fmt.Sprintf("198.18.%d.%d", i/8, 10+i%8) }

// userSource is real user j's own address, each in a network of its own
// (a /24 of 100.64.0.0/10): people sign in from their own homes and
// phones. Put in one /24, the run's few real users would share the budgets
// a node keeps per source network (a public client's budget is per
// network), and on a fast machine their loop would exceed them, which no
// crowd of people does.
func userSource(j int) string { return fmt.Sprintf("100.%d.%d.10", 64+j/256%64, j%256) }

// attackRun is the shared state of one run.
type attackRun struct {
	c       AttackConfig
	tr      *http.Transport
	start   time.Time
	attempt atomic.Int64
	thr     atomic.Int64
	checked atomic.Int64
	won     atomic.Int64
	first   atomic.Int64  // ns since start of the first throttle, 0 none
	dur     time.Duration // the attack phase's length
	mu      sync.Mutex
	granted []time.Time // token-flood grants
}

func (r *attackRun) throttled() {
	r.thr.Add(1)
	r.first.CompareAndSwap(0, max(int64(time.Since(r.start)), 1))
}

// RunAttack runs scenario: the real users alone for c.Duration, then the
// attack beside them for c.Duration (each phase extended by at most
// c.Extend, see phaseContext), and returns the figures of both phases.
func RunAttack(ctx context.Context, scenario string, c AttackConfig) (AttackResult, error) {
	if err := c.Validate(scenario); err != nil {
		return AttackResult{}, err
	}
	r := &attackRun{c: c, tr: newLoadTransport(maxIdlePerScenario)}
	defer r.tr.CloseIdleConnections()
	res := AttackResult{Scenario: scenario, Targets: len(c.Targets), DurationSeconds: c.Duration.Seconds(), Sources: c.Sources, AlertSeconds: -1, FirstThrottleSeconds: -1}
	real := r.realUser
	if scenario == AttackTokenFlood {
		real = r.bystander
	}

	// Phase 1: the real users alone.
	var baseDone atomic.Int64
	bctx, bcancel := phaseContext(ctx, c.Duration, c.Extend, func() bool { return baseDone.Load() > 0 })
	res.Baseline = runUsers(bctx, realThink, c.RealUsers, real, &baseDone)
	bcancel()
	if err := ctx.Err(); err != nil {
		return res, err
	}

	// Phase 2: the attack beside them.
	attackFor, alert := r.attackPhase(ctx, scenario, real, &res)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	r.attackFigures(scenario, attackFor, alert, &res)
	return res, nil
}

// alertWatch is what the attack phase knows of the security alert it
// waits for: whether it was seen and when (since the attack's start), and
// whether the attack is over.
type alertWatch struct {
	seen atomic.Bool
	at   atomic.Int64 // time.Duration since attackRun.start
	over atomic.Bool
}

// attackPhase runs the attack phase: c.Attackers attacking requests, the
// real users (real) and, for spray, one victim signing in now and then,
// watching for the scenario's alert when c.Alerted is set. It fills in
// res.Users, res.Victim and res.AlertKind and returns the phase's actual
// length and the alert watch.
func (r *attackRun) attackPhase(ctx context.Context, scenario string, real func(context.Context, int) (string, error), res *AttackResult) (time.Duration, *alertWatch) {
	c := r.c
	var victim func(context.Context, int) (string, error)
	if scenario == AttackSpray {
		victim = func(ctx context.Context, k int) (string, error) { return r.signIn(ctx, 0, k) }
	}
	var usersDone, victimDone atomic.Int64
	alert := &alertWatch{}
	r.start = time.Now()
	waitAlert := c.Alerted != nil && scenario != AttackSpray
	actx, cancel := phaseContext(ctx, c.Duration, c.Extend, func() bool {
		return usersDone.Load() > 0 && (victim == nil || victimDone.Load() > 0) && r.thr.Load() > 0 &&
			(!waitAlert || alert.seen.Load())
	})
	defer cancel()
	var wg sync.WaitGroup
	for i := range c.Attackers {
		wg.Go(func() { r.attack(actx, scenario, i) })
	}
	if c.Alerted != nil {
		kind := AlertKinds[scenario]
		res.AlertKind = kind
		wg.Go(func() { r.watchAlert(ctx, kind, alert) })
	}
	var vf UserFigures
	var vwg sync.WaitGroup
	if victim != nil {
		vwg.Go(func() { vf = runUsers(actx, victimThink, 1, victim, &victimDone) })
	}
	res.Users = runUsers(actx, realThink, c.RealUsers, real, &usersDone)
	<-actx.Done()
	attackFor := time.Since(r.start)
	alert.over.Store(true)
	vwg.Wait()
	wg.Wait()
	if victim != nil {
		res.Victim = &vf
	}
	return attackFor, alert
}

// watchAlert polls c.Alerted for an alert of kind since the attack's
// start and records the first in w. It polls while the attack runs and
// 5 s past it: an alert in flight still counts (its time is the alert's
// own).
func (r *attackRun) watchAlert(ctx context.Context, kind string, w *alertWatch) {
	var deadline time.Time
	for ctx.Err() == nil {
		if at, ok := r.c.Alerted(ctx, kind, r.start); ok {
			w.at.Store(int64(at.Sub(r.start)))
			w.seen.Store(true)
			return
		}
		if w.over.Load() {
			if deadline.IsZero() {
				deadline = time.Now().Add(5 * time.Second)
			} else if time.Now().After(deadline) {
				return
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// attackFigures fills in the attack's figures in res: the attacker's
// counts, the time to the first throttled answer and to the alert, the
// answers on the merits per source and minute and, for token-flood, the
// overshoot. With c.Extend the phase's length is attackFor, its actual
// length; otherwise c.Duration.
func (r *attackRun) attackFigures(scenario string, attackFor time.Duration, alert *alertWatch, res *AttackResult) {
	d := r.c.Duration
	if r.c.Extend > 0 {
		d = attackFor
		res.DurationSeconds = round3(d.Seconds())
	}
	r.dur = d
	res.Attempts, res.Throttled, res.Checked, res.Succeeded = r.attempt.Load(), r.thr.Load(), r.checked.Load(), r.won.Load()
	if f := r.first.Load(); f > 0 {
		res.FirstThrottleSeconds = round3(time.Duration(f).Seconds())
	}
	if alert.seen.Load() {
		res.AlertSeconds = round3(max(time.Duration(alert.at.Load()).Seconds(), 0))
	}
	res.CheckedPerSourceMinute = round3(float64(res.Checked) / float64(r.c.Sources) / d.Minutes())
	if scenario == AttackTokenFlood {
		r.floodFigures(res)
	}
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// floodFigures fills the overshoot of the client's budget.
func (r *attackRun) floodFigures(res *AttackResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.dur
	half := r.start.Add(d / 2)
	steady := 0
	for _, t := range r.granted {
		if !t.Before(half) {
			steady++
		}
	}
	burst := max(r.c.FloodPerMinute/10, 1)
	res.LimitPerMinute = r.c.FloodPerMinute
	res.BurstAllowancePerTarget = burst
	res.GrantedPerMinute = round3(float64(len(r.granted)) / d.Minutes())
	res.SteadyGrantedPerMinute = round3(float64(steady) / (d / 2).Minutes())
	allowed := float64(r.c.FloodPerMinute)*d.Minutes() + float64(burst*len(r.c.Targets))
	res.Overshoot = round3(float64(len(r.granted))/allowed - 1)
	res.SteadyOvershoot = round3(res.SteadyGrantedPerMinute/float64(r.c.FloodPerMinute) - 1)
}

// Think times: the real users take turns over at least 40 accounts (each
// account signs in a few times a minute: a person, not a loop); the
// spray's victim signs in every 4 s (15 a minute, within the sign-in
// limits of one person at one address).
const (
	realThink   = 100 * time.Millisecond
	victimThink = 4 * time.Second
)

// phaseContext is a phase's context: it ends after d, or with extend,
// once done reports true after d, and at the latest after d+extend.
func phaseContext(ctx context.Context, d, extend time.Duration, done func() bool) (context.Context, context.CancelFunc) {
	pctx, cancel := context.WithTimeout(ctx, d+extend)
	if extend <= 0 {
		return pctx, cancel
	}
	go func() {
		select {
		case <-pctx.Done():
			return
		case <-time.After(d):
		}
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for !done() {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
		}
		cancel()
	}()
	return pctx, cancel
}

// runUsers runs n real users in a loop until ctx ends and returns their
// figures; counted, when not nil, counts their finished attempts as they
// go. do reports whether the iteration succeeded; an error is a failure
// too.
func runUsers(ctx context.Context, think time.Duration, n int, do func(context.Context, int) (string, error), counted *atomic.Int64) UserFigures {
	h := hdrhistogram.New(histMin, histMax, histSigFigs)
	var mu sync.Mutex
	var f UserFigures
	var wg sync.WaitGroup
	var next atomic.Int64
	for range n {
		wg.Go(func() {
			for ctx.Err() == nil {
				k := int(next.Add(1) - 1)
				t0 := time.Now()
				oc, err := do(ctx, k)
				el := time.Since(t0)
				ok := oc == OutcomeOK && err == nil
				if ctx.Err() != nil && !ok {
					return // cut off by the end of the phase: not counted
				}
				mu.Lock()
				f.Attempts++
				if counted != nil {
					counted.Add(1)
				}
				if ok {
					f.OK++
					recordLatency(h, el)
				} else {
					if f.Failures == nil {
						f.Failures = map[string]int64{}
					}
					if err != nil {
						oc = OutcomeTransport
					}
					if len(f.Failures) < maxOutcomes {
						f.Failures[oc]++
					} else {
						f.Failures[OutcomeOther]++
					}
				}
				mu.Unlock()
				// A real user's think time: the per-account budgets
				// are sized for people, not loops.
				select {
				case <-ctx.Done():
				case <-time.After(think):
				}
			}
		})
	}
	wg.Wait()
	if f.Attempts > 0 {
		f.SuccessRate = round3(float64(f.OK) / float64(f.Attempts))
	}
	if f.OK > 0 {
		f.P50Ms = round3(float64(h.ValueAtQuantile(50)) / 1e6)
		f.P99Ms = round3(float64(h.ValueAtQuantile(99)) / 1e6)
	}
	return f
}

// target is the k-th pick of the targets.
func (r *attackRun) target(k int) Target { return r.c.Targets[k%len(r.c.Targets)] }

// browserAt is a fresh browser whose requests come from ip.
func (r *attackRun) browserAt(ip string) *browser {
	jar, _ := cookiejar.New(nil)
	return newBrowser(xffTransport{base: r.tr, ip: ip}, jar, r.c.Timeout)
}

// realUser is real user k%len(Users): a whole authorization code grant
// (sign-in, consent when asked, code redemption) from the user's address,
// in a fresh browser. The users take turns so that each signs in well
// within the per-account budget.
func (r *attackRun) realUser(ctx context.Context, k int) (string, error) {
	// Users[0] is the spray's victim; the others are the bystanders.
	j := 1 + k%(len(r.c.Flow.Users)-1)
	return r.signIn(ctx, j, k)
}

func (r *attackRun) signIn(ctx context.Context, j, k int) (string, error) {
	b := r.browserAt(userSource(j))
	oc, _, err := b.codeFlow(ctx, r.target(k), &r.c.Flow, r.c.Flow.Users[j])
	return oc, err
}

// bystander takes a token as the bystander client from the attacker's
// first address (the same egress NAT).
func (r *attackRun) bystander(ctx context.Context, k int) (string, error) {
	p := formPoster{client: &http.Client{Transport: xffTransport{base: r.tr, ip: attackSource(0)}, Timeout: r.c.Timeout, CheckRedirect: noRedirect}}
	status, body, err := p.post(ctx, r.target(k).TokenURL, url.Values{"grant_type": {"client_credentials"}}, r.c.Bystander.ID, r.c.Bystander.Secret)
	if err != nil {
		return OutcomeTransport, err
	}
	return classify(status, body), nil
}

// attack is attacking worker i until ctx ends.
func (r *attackRun) attack(ctx context.Context, scenario string, i int) {
	rng := mrand.New(mrand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	// Each worker owns the sources i, i+Attackers, …, so that one
	// source's requests are sequential (as from one bot).
	var own []string
	for s := i; s < r.c.Sources; s += r.c.Attackers {
		own = append(own, attackSource(s))
	}
	if len(own) == 0 {
		own = []string{attackSource(i % r.c.Sources)}
	}
	var p formPoster
	var devices map[string]*deviceSession
	if scenario == AttackDeviceGuess {
		devices = map[string]*deviceSession{}
	}
	for k := 0; ctx.Err() == nil; k++ {
		ip := own[k%len(own)]
		t := r.target(i + k)
		var outcome string
		switch scenario {
		case AttackStuffing:
			// Half the guesses name accounts that exist.
			name := fmt.Sprintf("victim-%d", rng.IntN(5000))
			if rng.IntN(2) == 0 {
				name = r.c.Flow.Users[rng.IntN(len(r.c.Flow.Users))].Username
			}
			outcome = r.wrongPassword(ctx, t, ip, name)
		case AttackSpray:
			outcome = r.wrongPassword(ctx, t, ip, r.c.Flow.Users[0].Username)
		case AttackDeviceGuess:
			outcome = r.guessCode(ctx, t, ip, devices)
		case AttackIntrospectGuess:
			p.client = &http.Client{Transport: xffTransport{base: r.tr, ip: ip}, Timeout: r.c.Timeout, CheckRedirect: noRedirect}
			status, body, err := p.post(ctx, t.IntrospectURL, url.Values{"token": {rand.Text() + rand.Text()}}, r.c.Client.ID, r.c.Client.Secret)
			outcome = attackTransport
			if err == nil {
				switch oc := classifyIntrospection(status, body); oc {
				case OutcomeInactive:
					outcome = attackChecked
				case OutcomeOK:
					outcome = attackWon
				default:
					outcome = throttledOr(status, oc)
				}
			}
		case AttackTokenFlood:
			p.client = &http.Client{Transport: xffTransport{base: r.tr, ip: ip}, Timeout: r.c.Timeout, CheckRedirect: noRedirect}
			status, body, err := p.post(ctx, t.TokenURL, url.Values{"grant_type": {"client_credentials"}}, r.c.Flooder.ID, r.c.Flooder.Secret)
			outcome = attackTransport
			if err == nil {
				oc := classify(status, body)
				if oc == OutcomeOK {
					outcome = attackWon
					r.mu.Lock()
					r.granted = append(r.granted, time.Now())
					r.mu.Unlock()
				} else {
					outcome = throttledOr(status, oc)
				}
			}
		}
		if ctx.Err() != nil {
			return // the answer may be the cut itself
		}
		r.attempt.Add(1)
		switch outcome {
		case attackThrottled:
			r.throttled()
		case attackChecked:
			r.checked.Add(1)
		case attackWon:
			r.won.Add(1)
		}
	}
}

const (
	attackThrottled = "throttled"
	attackChecked   = "checked"
	attackWon       = "won"
	attackTransport = "transport"
	attackOther     = "other"
)

func throttledOr(status int, oc string) string {
	if status == http.StatusTooManyRequests || oc == "slow_down" || oc == "rate_limited" {
		return attackThrottled
	}
	return attackOther
}

// pageOutcome classifies a sign-in or device page answer.
func pageOutcome(status int, body []byte) string {
	page := string(body)
	switch {
	case status == http.StatusTooManyRequests || strings.Contains(page, "Too many attempts"):
		return attackThrottled
	case strings.Contains(page, "Invalid username or password"), strings.Contains(page, "Unknown or expired code"), strings.Contains(page, "not a valid code"):
		return attackChecked
	}
	return attackOther
}

// wrongPassword opens the sign-in page from ip and posts name with a wrong
// password.
func (r *attackRun) wrongPassword(ctx context.Context, t Target, ip, name string) string {
	b := r.browserAt(ip)
	q := url.Values{
		"response_type": {"code"}, "client_id": {r.c.Flow.ClientID}, "redirect_uri": {r.c.Flow.RedirectURI},
		"scope": {"openid"}, "state": {"s"}, "code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}, "code_challenge_method": {"S256"},
	}
	status, body, _, err := b.get(ctx, t.AuthorizeURL+"?"+q.Encode())
	if err != nil {
		return attackTransport
	}
	m := reqField.FindStringSubmatch(string(body))
	if m == nil {
		if oc := pageOutcome(status, body); oc == attackThrottled {
			return oc
		}
		return attackOther
	}
	form := url.Values{"req": {html.UnescapeString(m[1])}, "action": {"login"}, "username": {name}, "password": {"Winter2026!" + rand.Text()[:4]}}
	status, body, loc, err := b.postPage(ctx, t.AuthorizeURL, form)
	if err != nil {
		return attackTransport
	}
	if loc != nil || strings.Contains(string(body), `value="approve"`) {
		return attackWon
	}
	return pageOutcome(status, body)
}

// deviceSession is the attacker's signed-in browser at one address and
// the last entry form's req value.
type deviceSession struct {
	b   *browser
	req string
}

// deviceURL is t's device verification page.
func deviceURL(t Target) string { return strings.TrimSuffix(t.Issuer, "/") + "/device" }

// guessCode posts one random user code from ip, signing the attacker in
// at that address first.
func (r *attackRun) guessCode(ctx context.Context, t Target, ip string, sessions map[string]*deviceSession) string {
	ds := sessions[ip]
	if ds == nil {
		b := r.browserAt(ip)
		status, body, _, err := b.get(ctx, deviceURL(t))
		if err != nil {
			return attackTransport
		}
		m := reqField.FindStringSubmatch(string(body))
		if m == nil {
			return pageOutcome(status, body)
		}
		status, body, _, err = b.postPage(ctx, deviceURL(t), url.Values{"req": {html.UnescapeString(m[1])}, "action": {"login"},
			"username": {r.c.Attacker.Username}, "password": {r.c.Attacker.Password}})
		if err != nil {
			return attackTransport
		}
		m = reqField.FindStringSubmatch(string(body))
		if m == nil || !strings.Contains(string(body), "user_code") {
			return pageOutcome(status, body)
		}
		ds = &deviceSession{b: b, req: html.UnescapeString(m[1])}
		sessions[ip] = ds
	}
	const alphabet = "BCDFGHJKLMNPQRSTVWXZ"
	var code [8]byte
	for i := range code {
		code[i] = alphabet[mrand.IntN(len(alphabet))]
	}
	status, body, _, err := ds.b.postPage(ctx, deviceURL(t), url.Values{"req": {ds.req}, "action": {"lookup"}, "user_code": {string(code[:4]) + "-" + string(code[4:])}})
	if err != nil {
		return attackTransport
	}
	if m := reqField.FindStringSubmatch(string(body)); m != nil {
		ds.req = html.UnescapeString(m[1])
	}
	if strings.Contains(string(body), `value="approve"`) {
		return attackWon
	}
	return pageOutcome(status, body)
}
