package main

import (
	"context"
	"flag"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

// signingAlgs are the JWS algorithms a tenant may sign with.
func signingAlgs() []string { return []string{"ES256", "EdDSA", "RS256"} }

func tenantCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "tenant create",
			synopsis: "--name ID [--display-name S] [--signing-alg ES256|EdDSA|RS256]",
			summary:  "Create a tenant; its issuer is {base}/t/{ID}.",
			detail:   "The ID is lower-case letters, digits and '-', 1 to 63 characters.\nThe signing algorithm defaults to the server's (ES256).",
			examples: []string{
				`tally admin tenant create --name acme --display-name "Acme Corp"`,
				`tally admin tenant create --name legacy --signing-alg RS256 --output json`,
			},
			setup: tenantCreate,
		},
		{
			path:     "tenant get",
			takesArg: true,
			synopsis: "ID",
			summary:  "Show a tenant.",
			examples: []string{`tally admin tenant get acme`, `tally admin tenant get acme --output json`},
			setup:    tenantGet,
		},
		{
			path:     "tenant list",
			synopsis: "",
			summary:  "List the tenants.",
			examples: []string{`tally admin tenant list`, `tally admin tenant list --output json | jq -r '.[].id'`},
			setup:    tenantList,
		},
	}
}

// tenantCreate is "tally admin tenant create": create a tenant; its issuer is {base}/t/{ID}.
func tenantCreate(fs *flag.FlagSet) adminAction {
	name := fs.String("name", "", "tenant `ID` (required)")
	display := fs.String("display-name", "", "human-readable `name`")
	alg := fs.String("signing-alg", "", "signing `algorithm`: ES256, EdDSA or RS256 (default: the server's)")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("name", *name); err != nil {
			return err
		}
		if err := oneOf("signing-alg", *alg, true, signingAlgs()...); err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{
			Id:          *name,
			DisplayName: *display,
			SigningAlg:  *alg,
		}))
		if err != nil {
			return err
		}
		t := res.Msg.GetTenant()
		return s.printOne(t, tenantFields(t))
	}
}

// tenantGet is "tally admin tenant get": show a tenant.
func tenantGet(fs *flag.FlagSet) adminAction {
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := oneArg(args, "tenant ID")
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.GetTenant(ctx, connect.NewRequest(&adminv1.GetTenantRequest{Id: id}))
		if err != nil {
			return err
		}
		t := res.Msg.GetTenant()
		return s.printOne(t, tenantFields(t))
	}
}

// tenantList is "tally admin tenant list": list the tenants.
func tenantList(fs *flag.FlagSet) adminAction {
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.ListTenants(ctx, connect.NewRequest(&adminv1.ListTenantsRequest{}))
		if err != nil {
			return err
		}
		return printList(s, res.Msg.GetTenants(),
			[]string{"ID", "DISPLAY NAME", "SIGNING ALG", "DISABLED", "ISSUER", "CREATED"},
			func(t *adminv1.Tenant) []string {
				return []string{t.GetId(), t.GetDisplayName(), t.GetSigningAlg(), textBool(t.GetDisabled()), t.GetIssuer(), textTime(t.GetCreatedAt())}
			})
	}
}

func tenantFields(t *adminv1.Tenant) []field {
	return []field{
		{"id", t.GetId()},
		{"display_name", t.GetDisplayName()},
		{"issuer", t.GetIssuer()},
		{"signing_alg", t.GetSigningAlg()},
		{"disabled", textBool(t.GetDisabled())},
		{"created_at", textTime(t.GetCreatedAt())},
	}
}
