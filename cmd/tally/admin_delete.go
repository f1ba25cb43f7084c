package main

import (
	"context"
	"flag"
	"strconv"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

// Deleting clients, users and tenants (issue 16).

func deleteCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "client delete",
			takesArg: true,
			synopsis: "[--tenant T] CLIENT_ID",
			summary:  "Delete a client for good; its tokens and refresh tokens stop working.",
			detail: "Revokes the client's refresh-token families and removes its consents and\n" +
				"device codes; resource servers reject its access tokens (event\n" +
				"client-deleted) and introspection answers active:false on every node. The\n" +
				"id cannot be registered again for two hours.",
			examples: []string{`tally admin client delete --tenant acme 3f9c2a7e`},
			setup:    clientDelete,
		},
		{
			path:     "user delete",
			takesArg: true,
			synopsis: "[--tenant T] USER",
			summary:  "Delete a user for good and erase their personal data (right to erasure).",
			detail: "USER is an id or a username. Revokes the user's refresh-token families,\n" +
				"consents and device grants; resource servers reject the user's access\n" +
				"tokens (event user-deleted, carrying only the user id). The username,\n" +
				"e-mail, name and password hash are erased from the replicated state and\n" +
				"the state file at once; see the README (\"Deleting\") for the Raft log and\n" +
				"snapshots.",
			examples: []string{`tally admin user delete --tenant default alice`, `tally admin user delete u_3f9c2a7e --output json`},
			setup:    userDelete,
		},
		{
			path:     "tenant delete",
			takesArg: true,
			synopsis: "--yes ID",
			summary:  "Delete a tenant and everything in it: clients, users, keys, revocations.",
			detail: "Needs --yes: it cannot be undone. Every token of the tenant stops\n" +
				"working: its issuer answers 404, and resource servers using the SDK\n" +
				"receive a signed tenant-deleted event. Its users' personal data is\n" +
				"erased. The \"" + adminDefaultTenant + "\" tenant cannot be deleted.",
			examples: []string{`tally admin tenant delete --yes acme`},
			setup:    tenantDelete,
		},
	}
}

// clientDelete is "tally admin client delete": delete a client for good; its tokens and refresh tokens stop working.
func clientDelete(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := clientTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.DeleteClient(ctx, connect.NewRequest(&adminv1.DeleteClientRequest{Tenant: *tenant, ClientId: id}))
		if err != nil {
			return err
		}
		m := res.Msg
		return s.printOne(m, []field{{"deleted", "client"}, {"tenant", m.GetTenant()}, {"client_id", m.GetClientId()},
			{"raft_index", strconv.FormatUint(m.GetRaftIndex(), 10)}})
	}
}

// userDelete is "tally admin user delete": delete a user for good and erase their personal data (right to erasure).
func userDelete(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		user, err := userTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.DeleteUser(ctx, connect.NewRequest(&adminv1.DeleteUserRequest{Tenant: *tenant, User: user}))
		if err != nil {
			return err
		}
		m := res.Msg
		return s.printOne(m, []field{{"deleted", "user"}, {"tenant", m.GetTenant()}, {"user_id", m.GetUserId()},
			{"raft_index", strconv.FormatUint(m.GetRaftIndex(), 10)}})
	}
}

// tenantDelete is "tally admin tenant delete": delete a tenant and everything in it: clients, users, keys, revocations.
func tenantDelete(fs *flag.FlagSet) adminAction {
	yes := fs.Bool("yes", false, "confirm: delete the tenant and everything in it")
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := oneArg(args, "tenant ID")
		if err != nil {
			return err
		}
		if !*yes {
			return usagef("deleting tenant %q deletes every client, user, key and revocation in it; add --yes to confirm", id)
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.DeleteTenant(ctx, connect.NewRequest(&adminv1.DeleteTenantRequest{Id: id}))
		if err != nil {
			return err
		}
		m := res.Msg
		return s.printOne(m, []field{{"deleted", "tenant"}, {"id", m.GetId()},
			{"raft_index", strconv.FormatUint(m.GetRaftIndex(), 10)}})
	}
}
