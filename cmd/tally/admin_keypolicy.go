package main

import (
	"context"
	"errors"
	"flag"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

// Issue 11: key policies and tenant-wide PAR.

func keyPolicyCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "key policy set",
			synopsis: "[--tenant T] --rotate-every D [--seal-rotate-every D]",
			summary:  "Set a tenant's automatic key rotation (0 turns it off).",
			detail: "The cluster's leader then rotates the tenant's signing keys every --rotate-every\n" +
				"(at least 1h) and its sealing keys every --seal-rotate-every (default: the\n" +
				"smaller of --rotate-every and 5 days, the AES-GCM bound). New keys are published\n" +
				"for the JWKS max-age before they sign; old ones stay published until every token\n" +
				"they signed and every cached JWKS expired. D is a duration (720h, 30d) or seconds.",
			examples: []string{
				`tally admin key policy set --tenant acme --rotate-every 30d`,
				`tally admin key policy set --tenant acme --rotate-every 0`,
			},
			setup: keyPolicySet,
		},
		{
			path:     "key policy get",
			synopsis: "[--tenant T]",
			summary:  "Show a tenant's key rotation policy and its next rotation.",
			examples: []string{`tally admin key policy get --tenant acme --output json`},
			setup:    keyPolicyGet,
		},
		{
			path:     "tenant par",
			synopsis: "[--tenant T] --require=true|false",
			summary:  "Require pushed authorization requests (RFC 9126) for every client of a tenant.",
			examples: []string{`tally admin tenant par --tenant acme --require`},
			setup:    tenantPAR,
		},
	}
}

// keyPolicySet is "tally admin key policy set": set a tenant's automatic key rotation (0 turns it off).
func keyPolicySet(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	every := daysFlag(fs, "rotate-every", "signing key `interval`: a duration (30d, 720h) or seconds; 0 turns rotation off")
	seal := daysFlag(fs, "seal-rotate-every", "sealing key `interval` (default: min(rotate-every, 5d))")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("tenant", *tenant); err != nil {
			return err
		}
		if !setFlags(fs)["rotate-every"] {
			return usagef("--rotate-every is required")
		}
		e, err := wholeSeconds("rotate-every", *every)
		if err != nil {
			return err
		}
		sl, err := wholeSeconds("seal-rotate-every", *seal)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.SetKeyPolicy(ctx, connect.NewRequest(&adminv1.SetKeyPolicyRequest{Tenant: *tenant, RotateEverySeconds: e, SealRotateEverySeconds: sl}))
		if err != nil {
			return err
		}
		return s.printKeyPolicy(res.Msg.GetPolicy())
	}
}

// keyPolicyGet is "tally admin key policy get": show a tenant's key rotation policy and its next rotation.
func keyPolicyGet(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("tenant", *tenant); err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.GetKeyPolicy(ctx, connect.NewRequest(&adminv1.GetKeyPolicyRequest{Tenant: *tenant}))
		if err != nil {
			return err
		}
		return s.printKeyPolicy(res.Msg.GetPolicy())
	}
}

// tenantPAR is "tally admin tenant par": require pushed authorization requests (RFC 9126) for every client of a tenant.
func tenantPAR(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	require := fs.Bool("require", false, "require PAR for every authorization request of the tenant")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("tenant", *tenant); err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.SetTenantPAR(ctx, connect.NewRequest(&adminv1.SetTenantPARRequest{Tenant: *tenant, Require: *require}))
		if err != nil {
			return err
		}
		t := res.Msg.GetTenant()
		return s.printOne(t, []field{{"id", t.GetId()}, {"require_pushed_authorization_requests", textBool(t.GetRequirePushedAuthorizationRequests())}})
	}
}

func (s *adminSession) printKeyPolicy(p *adminv1.KeyPolicy) error {
	return s.printOne(p, []field{
		{"tenant", p.GetTenant()},
		{"rotate_every", textSeconds(p.GetRotateEverySeconds())},
		{"seal_rotate_every", textSeconds(p.GetSealRotateEverySeconds())},
		{"signing_key_since", textTime(p.GetSigningKeySince())},
		{"sealing_key_since", textTime(p.GetSealingKeySince())},
		{"next_rotation_at", textTime(p.GetNextRotationAt())},
		{"updated_at", textTime(p.GetUpdatedAt())},
	})
}

// days is a seconds flag that also takes whole days ("30d").
type days struct{ seconds }

func (d *days) Set(s string) error {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil || v < 0 || v > 100*365 {
			return errors.New(`want whole days like "30d", a duration like "720h", or seconds`)
		}
		d.seconds = seconds(time.Duration(v) * 24 * time.Hour)
		return nil
	}
	return d.seconds.Set(s)
}

func daysFlag(fs *flag.FlagSet, name, usage string) *time.Duration {
	d := &days{}
	fs.Var(d, name, usage)
	return (*time.Duration)(&d.seconds)
}
