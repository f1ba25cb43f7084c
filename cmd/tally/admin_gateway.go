package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/policy"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

// gatewayCommands: tally admin gateway … and tally admin policy … (issue 12).
func gatewayCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "gateway route set",
			synopsis: "[--tenant T] --path-prefix /P [--method M] [--scope S]... [--phantom-audience A]",
			summary:  "Add or replace a gateway route: the scopes a request's token needs.",
			detail: "Routes are matched by the longest path prefix (on a segment boundary) whose\n" +
				"method matches; --method omitted matches every method. A request with no\n" +
				"route is denied. With --phantom-audience a passing check also returns a\n" +
				"short-lived JWT for that audience (X-Tally-Phantom-Token).",
			examples: []string{`tally admin gateway route set --tenant acme --path-prefix /orders --method GET --scope read:orders`},
			setup:    gatewayRouteSet,
		},
		{
			path:     "gateway route delete",
			synopsis: "[--tenant T] --path-prefix /P [--method M]",
			summary:  "Delete a gateway route.",
			examples: []string{`tally admin gateway route delete --tenant acme --path-prefix /orders --method GET`},
			setup:    gatewayRouteDelete,
		},
		{
			path:     "gateway route list",
			synopsis: "[--tenant T]",
			summary:  "List a tenant's gateway routes.",
			examples: []string{`tally admin gateway route list --tenant acme --output json`},
			setup:    gatewayRouteList,
		},
		{
			path:     "gateway ratelimit set",
			synopsis: "[--tenant T] [--client C] --per-second N [--burst B]",
			summary:  "Set (or with --per-second 0 remove) a client's gateway rate limit.",
			detail:   "Without --client the limit applies to every client that has none of its own.\nLimits are token buckets per node; excess requests get 429.",
			examples: []string{`tally admin gateway ratelimit set --tenant acme --client 3f9c2a7e --per-second 10 --burst 20`},
			setup:    gatewayRatelimitSet,
		},
		{
			path:     "policy set",
			synopsis: "[--tenant T] [--client C] (--file POLICY | --clear) [--dry-run]",
			summary:  "Set a tenant's (or a client's) CEL policy; refused if it does not compile.",
			detail: "The policy is one CEL expression yielding a bool or a map with \"allow\",\n" +
				"\"reason\" and \"scopes\" (see package issuance/policy). It is compiled before it\n" +
				"is written; every node evaluates the new version from the same Raft index.\n" +
				"--dry-run logs the decisions without enforcing them.",
			examples: []string{`tally admin policy set --tenant acme --file policy.cel`},
			setup:    policySet,
		},
		{
			path:     "policy test",
			synopsis: "[--tenant T] --file POLICY --input JSON",
			summary:  "Evaluate a CEL policy offline against one input and print the decision.",
			detail: "Nothing is sent to the server. --input is a JSON object (or @FILE) with the\n" +
				"policy variables: client, subject, actor, grant_type, requested_scopes,\n" +
				"granted_scopes, audience, client_ip, method, path, time (RFC 3339), device,\n" +
				"user, risk. The decision is {\"allow\", \"reason\", \"scopes\", \"narrowed\"}.",
			examples: []string{`tally admin policy test --tenant acme --file policy.cel --input '{"client":"app","grant_type":"client_credentials"}' --output json`},
			setup:    policyTest,
		},
	}
}

// gatewayRouteSet is "tally admin gateway route set": add or replace a gateway route: the scopes a request's token needs.
func gatewayRouteSet(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	prefix := fs.String("path-prefix", "", "path `prefix` of the route, e.g. /orders")
	method := fs.String("method", "", "HTTP `method` (default: every method)")
	scopes := &listFlag{}
	fs.Var(scopes, "scope", "required `scope`, repeatable (space-separated values allowed)")
	phantom := fs.String("phantom-audience", "", "`audience` of the phantom JWT to hand to the service")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("path-prefix", *prefix); err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		var sc []string
		for _, v := range scopes.values {
			sc = append(sc, strings.Fields(v)...)
		}
		res, err := api.SetGatewayRoute(ctx, connect.NewRequest(&adminv1.SetGatewayRouteRequest{Tenant: *tenant,
			Route: &adminv1.GatewayRoute{PathPrefix: *prefix, Method: strings.ToUpper(*method), Scopes: sc, PhantomAudience: *phantom}}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg.GetConfig(), gatewayFields(res.Msg.GetConfig()))
	}
}

// gatewayRouteDelete is "tally admin gateway route delete": delete a gateway route.
func gatewayRouteDelete(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	prefix := fs.String("path-prefix", "", "path `prefix` of the route")
	method := fs.String("method", "", "HTTP `method` of the route")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.DeleteGatewayRoute(ctx, connect.NewRequest(&adminv1.DeleteGatewayRouteRequest{Tenant: *tenant, PathPrefix: *prefix, Method: strings.ToUpper(*method)}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg.GetConfig(), gatewayFields(res.Msg.GetConfig()))
	}
}

// gatewayRouteList is "tally admin gateway route list": list a tenant's gateway routes.
func gatewayRouteList(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		api, err := s.tenantClient(args, *tenant)
		if err != nil {
			return err
		}
		res, err := api.GetGatewayConfig(ctx, connect.NewRequest(&adminv1.GetGatewayConfigRequest{Tenant: *tenant}))
		if err != nil {
			return err
		}
		return printList(s, res.Msg.GetConfig().GetRoutes(), []string{"PATH PREFIX", "METHOD", "SCOPES", "PHANTOM AUDIENCE"},
			func(r *adminv1.GatewayRoute) []string {
				m := r.GetMethod()
				if m == "" {
					m = "*"
				}
				return []string{r.GetPathPrefix(), m, strings.Join(r.GetScopes(), " "), r.GetPhantomAudience()}
			})
	}
}

// gatewayRatelimitSet is "tally admin gateway ratelimit set": set (or with --per-second 0 remove) a client's gateway rate limit.
func gatewayRatelimitSet(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	client := fs.String("client", "", "client `id` (default: every client)")
	perSecond := fs.Float64("per-second", 0, "requests per `second`")
	burst := fs.Uint("burst", 1, "bucket `size`")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if *perSecond < 0 {
			return usagef("--per-second must not be negative")
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.SetGatewayRateLimit(ctx, connect.NewRequest(&adminv1.SetGatewayRateLimitRequest{Tenant: *tenant,
			Limit: &adminv1.GatewayRateLimit{ClientId: *client, PerSecond: *perSecond, Burst: uint32(*burst)}}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg.GetConfig(), gatewayFields(res.Msg.GetConfig()))
	}
}

// policySet is "tally admin policy set": set a tenant's (or a client's) CEL policy; refused if it does not compile.
func policySet(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	client := fs.String("client", "", "client `id` (default: the tenant's policy)")
	file := fs.String("file", "", "CEL policy `file`")
	clear := fs.Bool("clear", false, "remove the policy")
	dry := fs.Bool("dry-run", false, "log decisions without enforcing them")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		src := ""
		if !*clear {
			if err := requireFlag("file", *file); err != nil {
				return err
			}
			b, err := os.ReadFile(*file)
			if err != nil {
				return usagef("read --file: %v", err)
			}
			src = strings.TrimSpace(string(b))
			if _, err := policy.Compile(src); err != nil {
				return usagef("%v", err)
			}
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.SetPolicy(ctx, connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: *tenant,
			Policy: &adminv1.PolicyInfo{ClientId: *client, Source: src, DryRun: *dry}}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg.GetConfig(), gatewayFields(res.Msg.GetConfig()))
	}
}

// policyTest is "tally admin policy test": evaluate a CEL policy offline against one input and print the decision.
func policyTest(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	file := fs.String("file", "", "CEL policy `file`")
	input := fs.String("input", "", "input `JSON` object, or @FILE")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("file", *file); err != nil {
			return err
		}
		b, err := os.ReadFile(*file)
		if err != nil {
			return usagef("read --file: %v", err)
		}
		prg, err := policy.Compile(strings.TrimSpace(string(b)))
		if err != nil {
			return usagef("%v", err)
		}
		raw := []byte(*input)
		if f, ok := strings.CutPrefix(*input, "@"); ok {
			if raw, err = os.ReadFile(f); err != nil {
				return usagef("read --input: %v", err)
			}
		}
		in, err := policyInput(raw, *tenant)
		if err != nil {
			return usagef("--input: %v", err)
		}
		d, err := prg.Eval(in)
		if err != nil {
			return fmt.Errorf("evaluate: %w", err)
		}
		if s.json {
			out, _ := json.Marshal(d)
			return s.writeJSON(out)
		}
		return writeFields(s.e.stdout, []field{{"allow", strconv.FormatBool(d.Allow)}, {"reason", d.Reason}, {"scopes", strings.Join(d.Scopes, " ")}})
	}
}

func gatewayFields(c *adminv1.GatewayConfig) []field {
	return []field{{"tenant", c.GetTenant()}, {"revision", strconv.FormatUint(c.GetRevision(), 10)},
		{"routes", strconv.Itoa(len(c.GetRoutes()))}, {"rate limits", strconv.Itoa(len(c.GetRateLimits()))},
		{"policies", strconv.Itoa(len(c.GetPolicies()))}}
}

// policyInput decodes a policy test input.
func policyInput(raw []byte, tenant string) (issuance.PolicyInput, error) {
	var v struct {
		Client          string            `json:"client"`
		Subject         string            `json:"subject"`
		Actor           string            `json:"actor"`
		GrantType       string            `json:"grant_type"`
		RequestedScopes []string          `json:"requested_scopes"`
		GrantedScopes   []string          `json:"granted_scopes"`
		Audience        []string          `json:"audience"`
		ClientIP        string            `json:"client_ip"`
		Method          string            `json:"method"`
		Path            string            `json:"path"`
		Time            string            `json:"time"`
		Device          map[string]string `json:"device"`
		User            map[string]string `json:"user"`
		Risk            float64           `json:"risk"`
		Alerts          []string          `json:"alerts"`
		TenantAlerts    []string          `json:"tenant_alerts"`
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return issuance.PolicyInput{}, err
	}
	in := issuance.PolicyInput{Tenant: tenant, ClientID: v.Client, Subject: v.Subject, Actor: v.Actor, GrantType: v.GrantType,
		RequestedScopes: v.RequestedScopes, GrantedScopes: v.GrantedScopes, Audience: v.Audience, ClientIP: v.ClientIP,
		Method: v.Method, Path: v.Path, Device: v.Device, User: v.User, Risk: v.Risk,
		Alerts: v.Alerts, TenantAlerts: v.TenantAlerts, Time: time.Now()}
	if v.Time != "" {
		t, err := time.Parse(time.RFC3339, v.Time)
		if err != nil {
			return in, fmt.Errorf("time: %w", err)
		}
		in.Time = t
	}
	return in, nil
}
