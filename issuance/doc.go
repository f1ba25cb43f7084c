// Package issuance implements the OAuth 2.0 / OpenID Connect protocol of a
// tally tenant: its HTTP endpoints, client authentication, and the minting and
// checking of tokens.
//
// It decides from a parsed request, a read view of replicated state (State)
// and a clock; writes go through the narrow Revoker interface. It imports no
// Raft, bbolt or NATS code (see deps_test.go): the node package wires State
// and Revoker to the Raft replica.
//
// The end-user flows — /authorize with server-rendered login and consent
// pages (authorize.go, login.go, pages.go), the authorization_code grant
// with PKCE S256 (grant_authorization_code.go), refresh rotation with reuse
// detection (grant_refresh_token.go), device authorization (device.go), ID
// tokens and userinfo (oidc.go, userinfo.go) — read end users through Users
// and propose their one write each through Grants (users.go).
package issuance
