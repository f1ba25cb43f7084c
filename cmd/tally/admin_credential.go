package main

// tally admin credential …: named admin credentials (issue 13).

import (
	"context"
	"flag"
	"time"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

func credentialFields(c *adminv1.AdminCredential) []field {
	return []field{
		{"id", c.GetId()},
		{"name", c.GetName()},
		{"role", c.GetRole()},
		{"tenant", c.GetTenant()},
		{"active", textBool(c.GetActive())},
		{"created_at", textTime(c.GetCreatedAt())},
		{"expires_at", textTime(c.GetExpiresAt())},
		{"revoked_at", textTime(c.GetRevokedAt())},
		{"created_by", c.GetCreatedBy()},
	}
}

func credentialCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "credential create",
			synopsis: "--name N --role admin|operator|tenant-admin|auditor [--tenant T] [--ttl D | --no-expiry]",
			summary:  "Create a named admin credential; its token is printed once.",
			detail: "The token works wherever the admin token does (TALLY_ADMIN_TOKEN,\n" +
				"--admin-token), within its role: admin (everything), operator (cluster\n" +
				"operations and reads), tenant-admin (one tenant, --tenant), auditor (reads).\n" +
				"Only a keyed hash of the token is stored. Without --ttl it expires after 90 days.",
			examples: []string{
				`tally admin credential create --name ci-deploy --role operator --output json | jq -r .token`,
				`tally admin credential create --name acme-ops --role tenant-admin --tenant acme --ttl 720h`,
			},
			setup: credentialCreate,
		},
		{
			path:     "credential list",
			summary:  "List the named admin credentials (never their tokens).",
			examples: []string{`tally admin credential list`, `tally admin credential list --output json | jq -r '.[] | select(.active) | .name'`},
			setup:    credentialList,
		},
		{
			path:     "credential revoke",
			takesArg: true,
			synopsis: "ID|NAME",
			summary:  "Revoke a named admin credential at once, on every node.",
			examples: []string{`tally admin credential revoke ci-deploy`},
			setup:    credentialRevoke,
		},
	}
}

// credentialCreate is "tally admin credential create": create a named admin credential; its token is printed once.
func credentialCreate(fs *flag.FlagSet) adminAction {
	name := fs.String("name", "", "credential `name`: a person or a pipeline (required)")
	role := fs.String("role", "", "`role`: admin, operator, tenant-admin or auditor (required)")
	tenant := fs.String("tenant", "", "tenant `ID` of a tenant-admin credential")
	ttl := fs.Duration("ttl", 0, "lifetime (`duration`; default 90 days)")
	noExpiry := fs.Bool("no-expiry", false, "the credential never expires")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("name", *name); err != nil {
			return err
		}
		if err := oneOf("role", *role, false, "admin", "operator", "tenant-admin", "auditor"); err != nil {
			return err
		}
		if (*role == "tenant-admin") != (*tenant != "") {
			return usagef("--tenant is required with --role tenant-admin, and only with it")
		}
		var ttlSec int64
		switch {
		case *noExpiry && *ttl != 0:
			return usagef("--ttl and --no-expiry exclude each other")
		case *noExpiry:
			ttlSec = -1
		case *ttl < 0:
			return usagef("--ttl must be positive")
		case *ttl > 0:
			ttlSec = int64((*ttl + time.Second - 1) / time.Second)
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.CreateAdminCredential(ctx, connect.NewRequest(&adminv1.CreateAdminCredentialRequest{
			Name: *name, Role: *role, Tenant: *tenant, TtlSeconds: ttlSec,
		}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg, append(credentialFields(res.Msg.GetCredential()), field{"token", res.Msg.GetToken()}))
	}
}

// credentialList is "tally admin credential list": list the named admin credentials (never their tokens).
func credentialList(fs *flag.FlagSet) adminAction {
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.ListAdminCredentials(ctx, connect.NewRequest(&adminv1.ListAdminCredentialsRequest{}))
		if err != nil {
			return err
		}
		return printList(s, res.Msg.GetCredentials(), []string{"ID", "NAME", "ROLE", "TENANT", "ACTIVE", "EXPIRES", "REVOKED"},
			func(c *adminv1.AdminCredential) []string {
				return []string{c.GetId(), c.GetName(), c.GetRole(), c.GetTenant(), textBool(c.GetActive()), textTime(c.GetExpiresAt()), textTime(c.GetRevokedAt())}
			})
	}
}

// credentialRevoke is "tally admin credential revoke": revoke a named admin credential at once, on every node.
func credentialRevoke(fs *flag.FlagSet) adminAction {
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := oneArg(args, "ID")
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.RevokeAdminCredential(ctx, connect.NewRequest(&adminv1.RevokeAdminCredentialRequest{Id: id}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg.GetCredential(), credentialFields(res.Msg.GetCredential()))
	}
}
