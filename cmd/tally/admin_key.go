package main

import (
	"context"
	"flag"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

func keyCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "key list",
			synopsis: "[--tenant T]",
			summary:  "List a tenant's signing and sealing keys (pending, active and retired).",
			examples: []string{`tally admin key list --tenant acme`, `tally admin key list --output json | jq -r '.[] | select(.state=="active") | .kid'`},
			setup: func(fs *flag.FlagSet) adminAction {
				tenant := tenantFlag(fs)
				return func(ctx context.Context, s *adminSession, args []string) error {
					api, err := s.tenantClient(args, *tenant)
					if err != nil {
						return err
					}
					res, err := api.ListKeys(ctx, connect.NewRequest(&adminv1.ListKeysRequest{Tenant: *tenant}))
					if err != nil {
						return err
					}
					return s.printKeys(res.Msg.GetKeys())
				}
			},
		},
		{
			path:     "key rotate",
			synopsis: "[--tenant T] [--alg ES256|EdDSA|RS256] [--publish-delay 5m]",
			summary:  "Create new signing and sealing keys for a tenant and print its keys.",
			detail: "New keys are published in the JWKS for --publish-delay before they sign, so\n" +
				"resource servers with a cached JWKS already know them. Without --publish-delay\n" +
				"the node's default (its JWKS max-age) applies; --publish-delay 0s uses them at\n" +
				"once. --alg changes the tenant's signing algorithm; without it the tenant's is kept.",
			examples: []string{
				`tally admin key rotate --tenant acme`,
				`tally admin key rotate --tenant acme --alg EdDSA --publish-delay 0s`,
			},
			setup: func(fs *flag.FlagSet) adminAction {
				tenant := tenantFlag(fs)
				alg := fs.String("alg", "", "signing `algorithm` of the new key: ES256, EdDSA or RS256 (default: the tenant's)")
				delay := secondsFlag(fs, "publish-delay", 0, "how long the new keys are published before use: a duration (5m) or seconds (default: the node's)")
				return func(ctx context.Context, s *adminSession, args []string) error {
					if err := noArgs(args); err != nil {
						return err
					}
					if err := requireFlag("tenant", *tenant); err != nil {
						return err
					}
					if err := oneOf("alg", *alg, true, signingAlgs()...); err != nil {
						return err
					}
					req := &adminv1.RotateKeysRequest{Tenant: *tenant, SigningAlg: *alg}
					if setFlags(fs)["publish-delay"] {
						secs, err := wholeSeconds("publish-delay", *delay)
						if err != nil {
							return err
						}
						req.PublishDelaySeconds = proto.Int64(secs)
					}
					api, err := s.client()
					if err != nil {
						return err
					}
					res, err := api.RotateKeys(ctx, connect.NewRequest(req))
					if err != nil {
						return err
					}
					return s.printKeys(res.Msg.GetKeys())
				}
			},
		},
	}
}

func (s *adminSession) printKeys(keys []*adminv1.Key) error {
	return printList(s, keys,
		[]string{"KID", "ALG", "USE", "STATE", "CREATED", "NOT BEFORE", "RETIRED", "EXPIRES"},
		func(k *adminv1.Key) []string {
			return []string{
				k.GetKid(), k.GetAlg(), k.GetUse(), k.GetState(), textTime(k.GetCreatedAt()),
				textTime(k.GetNotBefore()), textTime(k.GetRetiredAt()), textTime(k.GetExpiresAt()),
			}
		})
}
