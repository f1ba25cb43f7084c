package main

import (
	"flag"
	"fmt"
	"net/netip"
	"strings"

	"github.com/tallyauth/tally/issuance"
)

// threatFlags registers the rate-limit flags of tally serve (issue 13;
// issuance/ratelimit.go). Budgets are requests per minute, shared by the
// nodes of a cluster.
func threatFlags(fs *flag.FlagSet, c *issuance.RateLimits) {
	fs.Func("trusted-proxies", "comma-separated `CIDRs` of reverse proxies whose X-Forwarded-For gives the client address (default: none; the peer address is the client's)", func(s string) error {
		c.TrustedProxies = nil
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			if !strings.Contains(p, "/") {
				a, err := netip.ParseAddr(p)
				if err != nil {
					return err
				}
				p = netip.PrefixFrom(a, a.BitLen()).String()
			}
			pf, err := netip.ParsePrefix(p)
			if err != nil {
				return err
			}
			c.TrustedProxies = append(c.TrustedProxies, pf.Masked())
		}
		return nil
	})
	fs.Func("rate-limits", "on (default) or off: the rate limits of the public endpoints", func(s string) error {
		switch s {
		case "on":
			c.Off = false
		case "off":
			c.Off = true
		default:
			return fmt.Errorf("want on or off")
		}
		return nil
	})
	d := issuance.DefaultRateLimits()
	fs.IntVar(&c.PerClient, "rate-limit-client", d.PerClient, "requests per minute per client (-1: unlimited)")
	fs.IntVar(&c.PerIP, "rate-limit-ip", d.PerIP, "requests per minute per client address (IPv6: per /64)")
	fs.IntVar(&c.PerSubnet, "rate-limit-subnet", d.PerSubnet, "requests per minute per IPv4 /24 or IPv6 /48")
	fs.IntVar(&c.PerTenant, "rate-limit-tenant", d.PerTenant, "requests per minute per tenant")
	fs.IntVar(&c.PerUsername, "rate-limit-username", d.PerUsername, "sign-in posts per minute per username")
	fs.IntVar(&c.PerUnknownClient, "rate-limit-unknown-client", d.PerUnknownClient, "requests per minute per address that name a client the tenant does not know")
}
