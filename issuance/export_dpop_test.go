package issuance

// Test hooks for DPoP.

// NewBoundRefreshTokenForTest makes a refresh token bound to DPoP key jkt.
func (s *Server) NewBoundRefreshTokenForTest(tenant, family string, gen uint64, jkt string) (string, error) {
	return s.newRefreshToken(tenant, family, gen, jkt)
}

// RefreshTokenJKTForTest is the DPoP key a refresh token is bound to.
func (s *Server) RefreshTokenJKTForTest(tenant, tok string) (string, bool) {
	_, _, jkt, ok := s.parseRefreshToken(tenant, tok)
	return jkt, ok
}
