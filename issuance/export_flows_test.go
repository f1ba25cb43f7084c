package issuance

// Test hooks for the end-user flows.

func VerifyPKCEForTest(verifier, challenge string) bool { return verifyPKCE(verifier, challenge) }

func MatchRedirectForTest(c Client, presented string) (string, bool) {
	return matchRedirect(c, presented)
}

func (s *Server) NewRefreshTokenForTest(tenant, family string, gen uint64) (string, error) {
	return s.newRefreshToken(tenant, family, gen, "")
}

func (s *Server) ParseRefreshTokenForTest(tenant, tok string) (string, uint64, bool) {
	f, g, _, ok := s.parseRefreshToken(tenant, tok)
	return f, g, ok
}

func AtHashForTest(alg, token string) string { return atHash(alg, token) }
