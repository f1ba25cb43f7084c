package node

// SIEMSyslogDeliver sends one synthetic event with metadata.uid uid over
// the syslog transport cfg configures, as the exporter would, and closes
// the connection: the error of the write (for RELP, nil only once the
// collector acknowledged it).
func SIEMSyslogDeliver(cfg Config, uid string) error {
	s, err := newSyslogSink(cfg)
	if err != nil {
		return err
	}
	defer s.close()
	e := SIEMEvent{ClassUID: 3001, Metadata: SIEMMetadata{UID: uid}}
	return s.write([]SIEMEvent{e}, [][]byte{[]byte(`{"metadata":{"uid":"` + uid + `"}}`)})
}
