package policy_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/policy"
)

func TestCompileRefusesBadPolicies(t *testing.T) {
	for _, src := range []string{"", "client ==", "1 + 1", `"allow"`, "unknown_var == 1", "client == 1"} {
		if _, err := policy.Compile(src); err == nil {
			t.Errorf("Compile(%q) accepted", src)
		}
	}
}

func TestOutcomes(t *testing.T) {
	in := issuance.PolicyInput{Tenant: "acme", ClientID: "app", GrantType: "client_credentials",
		GrantedScopes: []string{"read", "write"}, ClientIP: "10.1.2.3", Device: map[string]string{"managed": "true"}}
	for src, want := range map[string]policy.Decision{
		`client == "app"`:                                    {Allow: true},
		`in_cidr(client_ip, "192.168.0.0/16")`:               {Allow: false, Reason: "denied by policy"},
		`{"allow": false, "reason": "no " + client}`:         {Allow: false, Reason: "no app"},
		`{"scopes": granted_scopes.filter(s, s != "write")}`: {Allow: true, Scopes: []string{"read"}, Narrowed: true},
		`device.managed == "true" && risk < 0.5`:             {Allow: true},
	} {
		p, err := policy.Compile(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		got, err := p.Eval(in)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got.Allow != want.Allow || got.Reason != want.Reason || !slices.Equal(got.Scopes, want.Scopes) {
			t.Errorf("%s: %+v, want %+v", src, got, want)
		}
	}
}

func TestEngineTenantAndClientDryRun(t *testing.T) {
	version := uint64(1)
	specs := []policy.Spec{{Source: `{"scopes": ["read"]}`}, {ClientID: "app", Source: `false`, DryRun: true}}
	e := policy.NewEngine(func(string) (uint64, []policy.Spec) { return version, specs }, nil)
	d, err := e.Evaluate(context.Background(), issuance.PolicyInput{Tenant: "acme", ClientID: "app"})
	if err != nil || d.Deny || !slices.Equal(d.Scopes, []string{"read"}) || d.Version != 1 {
		t.Fatalf("%+v %v", d, err)
	}
	version, specs = 2, []policy.Spec{{ClientID: "app", Source: `false`}}
	d, err = e.Evaluate(context.Background(), issuance.PolicyInput{Tenant: "acme", ClientID: "app"})
	if err != nil || !d.Deny || d.Version != 2 {
		t.Fatalf("%+v %v", d, err)
	}
}

func FuzzPolicyInput(f *testing.F) {
	p, err := policy.Compile(`in_cidr(client_ip, "10.0.0.0/8") && path.startsWith("/orders") && device["x"] != "y" ? {"allow": true, "scopes": granted_scopes} : {"allow": false, "reason": "outside"}`)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("10.0.0.1", "/orders", "x", "y", "read")
	f.Fuzz(func(t *testing.T, ip, path, k, v, scope string) {
		_, err := p.Eval(issuance.PolicyInput{ClientIP: ip, Path: path, Device: map[string]string{k: v}, GrantedScopes: []string{scope}})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// BenchmarkEvaluate is the CEL cost per grant: the tenant's compiled
// policy evaluated for one client credentials grant (no parsing).
func BenchmarkEvaluate(b *testing.B) {
	specs := []policy.Spec{{Source: `in_cidr(client_ip, "10.0.0.0/8") && risk < 0.7 ? {"scopes": granted_scopes.filter(s, s != "admin")} : {"allow": false, "reason": "network"}`}}
	e := policy.NewEngine(func(string) (uint64, []policy.Spec) { return 1, specs }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	in := issuance.PolicyInput{Tenant: "acme", ClientID: "app", GrantType: "client_credentials", ClientIP: "10.1.2.3",
		GrantedScopes: []string{"read", "write", "admin"}, Time: time.Now()}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Evaluate(ctx, in); err != nil {
			b.Fatal(err)
		}
	}
}
