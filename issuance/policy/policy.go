// Package policy is tally's contextual authorisation: CEL policies
// (github.com/google/cel-go) per tenant and per client, evaluated on every
// grant (token endpoint, token exchange), at the authorization endpoint
// before a code is issued (grant_type "authorization_code", method and path
// those of the authorization request) and at the gateway check.
//
// A policy is one CEL expression over these variables:
//
//	tenant, client, subject, actor, grant_type   string
//	requested_scopes, granted_scopes, audience   list(string)
//	client_ip, method, path                      string
//	time                                         timestamp
//	device, user                                 map(string, string)
//	risk                                         double
//	alerts, tenant_alerts                        list(string)
//
// client_ip comes from the direct peer or a trusted proxy's header only;
// device is the posture a trusted proxy or device agent asserted; risk,
// alerts and tenant_alerts come from the threat-detection hook
// (issuance.Config.Risk; 0 and empty when nothing scored the request). On
// a node they are the cluster's active security alerts (issue 13, node
// Config.AlertRiskWindow after the alert was raised, default 10 minutes):
// alerts lists the kinds (credential_stuffing, token_guessing,
// user_code_guessing, rate_limit_exceeded, refresh_new_network) of those
// that apply to the request — everything the alert names (client, user,
// source address or network) is the request's client, subject or
// client_ip — and risk is then 1; tenant_alerts lists the kinds of those
// that name only the tenant (e.g. failed sign-ins across the tenant), and
// risk is 0.5 when there are only such. For example, deny while the client or
// network is under attack, and drop to read-only while the tenant is:
//
//	risk >= 1.0 ? dyn({"allow": false, "reason": "under attack"}) :
//	  "credential_stuffing" in tenant_alerts ? dyn({"scopes": ["read"]}) : dyn({"allow": true})
//
// grant_type
// is "gateway" at the gateway check. The function in_cidr(ip, cidr) tests
// the network.
//
// The expression yields a bool (true allows, false denies) or a map with
// the optional keys "allow" (bool, default true), "reason" (string, the
// deny reason), "scopes" (list of strings: the granted scopes are
// narrowed to these) and "impersonate" (bool, default false: a token
// exchange with an actor_token issues its token without the act claim —
// impersonation, which is off unless a policy allows it). Both branches of a conditional must have one type:
// write maps in both, and wrap a map whose values have another type in
// dyn(), e.g. cond ? {"scopes": ["read"]} : dyn({"allow": false}).
// Anything else is refused when the policy is
// compiled, which is at write time (tally admin policy set), so a policy
// that does not compile never reaches the Raft log. Policies are compiled
// once per version (the gateway configuration's revision); evaluation does
// no parsing.
//
// The tenant's policy runs first, then the client's; the first deny wins
// and scope narrowing accumulates. A policy in dry-run mode is evaluated
// and logged but not enforced. Every decision that denies or narrows, and
// every dry-run decision, is logged with the policy version (the decision
// log); allows are logged at debug level.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"

	"github.com/tallyauth/tally/issuance"
)

// Spec is one stored policy: the tenant's (ClientID "") or a client's.
type Spec struct {
	ClientID string
	Source   string
	DryRun   bool
}

// Program is a compiled policy.
type Program struct {
	prg    cel.Program
	dryRun bool
}

var env = func() *cel.Env {
	e, err := cel.NewEnv(
		cel.Variable("tenant", cel.StringType),
		cel.Variable("client", cel.StringType),
		cel.Variable("subject", cel.StringType),
		cel.Variable("actor", cel.StringType),
		cel.Variable("grant_type", cel.StringType),
		cel.Variable("requested_scopes", cel.ListType(cel.StringType)),
		cel.Variable("granted_scopes", cel.ListType(cel.StringType)),
		cel.Variable("audience", cel.ListType(cel.StringType)),
		cel.Variable("client_ip", cel.StringType),
		cel.Variable("method", cel.StringType),
		cel.Variable("path", cel.StringType),
		cel.Variable("time", cel.TimestampType),
		cel.Variable("device", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("user", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("risk", cel.DoubleType),
		cel.Variable("alerts", cel.ListType(cel.StringType)),
		cel.Variable("tenant_alerts", cel.ListType(cel.StringType)),
		cel.Function("in_cidr",
			cel.Overload("in_cidr_string_string", []*cel.Type{cel.StringType, cel.StringType}, cel.BoolType,
				cel.BinaryBinding(func(ip, cidr ref.Val) ref.Val {
					a, err := netip.ParseAddr(string(ip.(types.String)))
					if err != nil {
						return types.False
					}
					p, err := netip.ParsePrefix(string(cidr.(types.String)))
					if err != nil {
						return types.False
					}
					return types.Bool(p.Contains(a.Unmap()))
				}))),
	)
	if err != nil {
		panic(err)
	}
	return e
}()

// maxCost bounds one evaluation (CEL's runtime cost units).
const maxCost = 100000

// Compile parses and type-checks a policy. The result must be a bool or a
// map; errors describe the problem for the operator.
func Compile(src string) (*Program, error) {
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		return nil, fmt.Errorf("policy: %w", iss.Err())
	}
	out := ast.OutputType()
	if !out.IsExactType(cel.BoolType) && out.Kind() != types.MapKind && !out.IsExactType(cel.DynType) {
		return nil, fmt.Errorf("policy: the expression yields %s; want a bool or a map", out)
	}
	prg, err := env.Program(ast, cel.CostLimit(maxCost), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return &Program{prg: prg}, nil
}

// Decision is one policy's outcome.
type Decision struct {
	Allow  bool     `json:"allow"`
	Reason string   `json:"reason,omitempty"`
	Scopes []string `json:"scopes,omitempty"`
	// Narrowed is true when the policy named scopes.
	Narrowed bool `json:"narrowed,omitempty"`
	// Impersonate allows a token exchange with an actor_token to issue
	// the token without the act claim (impersonation, RFC 8693 §1.1).
	Impersonate bool   `json:"impersonate,omitempty"`
	Version     uint64 `json:"version,omitempty"`
	DryRun      bool   `json:"dry_run,omitempty"`
}

// Activation builds the CEL variables of an input.
func Activation(in issuance.PolicyInput) map[string]any {
	t := in.Time
	if t.IsZero() {
		t = time.Now()
	}
	nz := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	nm := func(m map[string]string) map[string]string {
		if m == nil {
			return map[string]string{}
		}
		return m
	}
	return map[string]any{
		"tenant": in.Tenant, "client": in.ClientID, "subject": in.Subject, "actor": in.Actor,
		"grant_type": in.GrantType, "requested_scopes": nz(in.RequestedScopes), "granted_scopes": nz(in.GrantedScopes),
		"audience": nz(in.Audience), "client_ip": in.ClientIP, "method": in.Method, "path": in.Path,
		"time": t, "device": nm(in.Device), "user": nm(in.User), "risk": in.Risk,
		"alerts": nz(in.Alerts), "tenant_alerts": nz(in.TenantAlerts),
	}
}

// Eval evaluates the policy for in.
func (p *Program) Eval(in issuance.PolicyInput) (Decision, error) {
	return p.eval(Activation(in))
}

func (p *Program) eval(act map[string]any) (Decision, error) {
	v, _, err := p.prg.Eval(act)
	if err != nil {
		return Decision{}, fmt.Errorf("policy: evaluation: %w", err)
	}
	switch x := v.Value().(type) {
	case bool:
		d := Decision{Allow: x}
		if !x {
			d.Reason = "denied by policy"
		}
		return d, nil
	}
	m, ok := v.(interface {
		Get(ref.Val) ref.Val
		Contains(ref.Val) ref.Val
	})
	if !ok {
		return Decision{}, errors.New("policy: the expression yielded neither a bool nor a map")
	}
	d := Decision{Allow: true}
	if m.Contains(types.String("allow")) == types.True {
		b, ok := m.Get(types.String("allow")).Value().(bool)
		if !ok {
			return Decision{}, errors.New(`policy: "allow" is not a bool`)
		}
		d.Allow = b
	}
	if m.Contains(types.String("reason")) == types.True {
		s, ok := m.Get(types.String("reason")).Value().(string)
		if !ok {
			return Decision{}, errors.New(`policy: "reason" is not a string`)
		}
		d.Reason = s
	}
	if !d.Allow && d.Reason == "" {
		d.Reason = "denied by policy"
	}
	if m.Contains(types.String("impersonate")) == types.True {
		b, ok := m.Get(types.String("impersonate")).Value().(bool)
		if !ok {
			return Decision{}, errors.New(`policy: "impersonate" is not a bool`)
		}
		d.Impersonate = b
	}
	if m.Contains(types.String("scopes")) == types.True {
		lv := m.Get(types.String("scopes"))
		l, err := lv.ConvertToNative(stringSliceType)
		if err != nil {
			return Decision{}, errors.New(`policy: "scopes" is not a list of strings`)
		}
		d.Scopes, d.Narrowed = l.([]string), true
		if d.Scopes == nil {
			d.Scopes = []string{}
		}
	}
	return d, nil
}

// compiledSet is the compiled policies of one tenant at one version.
type compiledSet struct {
	version uint64
	tenant  *Program
	clients map[string]*Program
	err     error
}

// Source returns the policies of a tenant and their version.
type Source func(tenant string) (version uint64, specs []Spec)

// Engine evaluates the policies of a Source, compiling each version once.
// It implements issuance.PolicyEngine.
type Engine struct {
	src Source
	log *slog.Logger

	mu    sync.Mutex
	cache map[string]*compiledSet
}

// NewEngine returns an engine over src; log receives the decision log
// (nil: slog.Default()).
func NewEngine(src Source, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.Default()
	}
	return &Engine{src: src, log: log, cache: map[string]*compiledSet{}}
}

func (e *Engine) compiled(tenant string) *compiledSet {
	version, specs := e.src(tenant)
	e.mu.Lock()
	defer e.mu.Unlock()
	if c := e.cache[tenant]; c != nil && c.version == version {
		return c
	}
	c := &compiledSet{version: version, clients: map[string]*Program{}}
	for _, s := range specs {
		p, err := Compile(s.Source)
		if err != nil {
			// Refused at write time; a stored policy that does not
			// compile (another binary's CEL) fails closed.
			c.err = fmt.Errorf("policy of client %q at version %d: %w", s.ClientID, version, err)
			break
		}
		p.dryRun = s.DryRun
		if s.ClientID == "" {
			c.tenant = p
		} else {
			c.clients[s.ClientID] = p
		}
	}
	e.cache[tenant] = c
	return c
}

// Evaluate implements issuance.PolicyEngine.
func (e *Engine) Evaluate(ctx context.Context, in issuance.PolicyInput) (issuance.PolicyDecision, error) {
	c := e.compiled(in.Tenant)
	if c.err != nil {
		return issuance.PolicyDecision{}, c.err
	}
	out := issuance.PolicyDecision{Version: c.version}
	progs := []*Program{c.tenant, c.clients[in.ClientID]}
	if progs[0] == nil && progs[1] == nil {
		return out, nil
	}
	act := Activation(in)
	for i, p := range progs {
		if p == nil {
			continue
		}
		d, err := p.eval(act)
		if err != nil {
			return issuance.PolicyDecision{}, err
		}
		scope := "tenant"
		if i == 1 {
			scope = "client"
		}
		level := slog.LevelDebug
		if !d.Allow || d.Narrowed || p.dryRun {
			level = slog.LevelInfo
		}
		e.log.Log(ctx, level, "policy decision", "tenant", in.Tenant, "client", in.ClientID, "policy", scope,
			"version", c.version, "grant_type", in.GrantType, "allow", d.Allow, "reason", d.Reason,
			"narrowed_to", d.Scopes, "impersonate", d.Impersonate, "dry_run", p.dryRun)
		if p.dryRun {
			continue
		}
		if d.Narrowed {
			if out.Scopes == nil {
				out.Scopes = d.Scopes
			} else {
				out.Scopes = slices.DeleteFunc(out.Scopes, func(s string) bool { return !slices.Contains(d.Scopes, s) })
			}
		}
		if !d.Allow {
			out.Deny, out.Reason, out.Impersonate = true, d.Reason, false
			return out, nil
		}
		out.Impersonate = out.Impersonate || d.Impersonate
	}
	return out, nil
}

var _ issuance.PolicyEngine = (*Engine)(nil)

var stringSliceType = reflectStringSlice()
