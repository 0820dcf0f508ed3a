# SPDX-License-Identifier: MIT
# Written by make-nbd-corpus.py: the seeds of the NBD fuzz targets.

NBD_CORPUS = \
	corpus-handshake/abort-with-payload \
	corpus-handshake/bad-client-flags \
	corpus-handshake/bad-lengths \
	corpus-handshake/bad-option-magic \
	corpus-handshake/export-name-old \
	corpus-handshake/export-name-zeroes \
	corpus-handshake/extended-ordering \
	corpus-handshake/go-extended-meta \
	corpus-handshake/go-plain \
	corpus-handshake/go-structured-meta \
	corpus-handshake/hang-up-in-payload \
	corpus-handshake/info-then-go \
	corpus-handshake/info-unknown-name \
	corpus-handshake/list-abort \
	corpus-handshake/list-described \
	corpus-handshake/list-meta-queries \
	corpus-handshake/not-fixed \
	corpus-handshake/pieces-of-7 \
	corpus-handshake/starttls-extended \
	corpus-handshake/starttls-fails \
	corpus-handshake/starttls-refused \
	corpus-handshake/starttls-require \
	corpus-handshake/timeout-in-option \
	corpus-handshake/timeout-unread-reply \
	corpus-handshake/tls-required-export-name \
	corpus-handshake/trickle \
	corpus-handshake/unsupported \
	corpus-request/bad-magic \
	corpus-request/extended-08 \
	corpus-request/extended-0f \
	corpus-request/extended-2f \
	corpus-request/extended-4b \
	corpus-request/extended-compact-magic \
	corpus-request/extended-huge-payload \
	corpus-request/huge-write \
	corpus-request/overflow \
	corpus-request/session-00 \
	corpus-request/session-01 \
	corpus-request/session-07 \
	corpus-request/session-15 \
	corpus-request/session-21 \
	corpus-request/session-31 \
	corpus-request/session-43 \
	corpus-request/short \
	$(NULL)
