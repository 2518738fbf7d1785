package sources

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// Transient reports whether a database error may go away on its own: a
// lost, refused or stalled connection, a server shutting down or out of
// connection slots, a serialization failure or deadlock, and a lost
// advisory lock (the next attempt takes it again, or finds the unit
// exported). Missing tables or columns, permissions and bad data are
// permanent. Network failures below the protocol (a reset socket) are not
// decided here: they are transient for every dependency alike.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrLockLost) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code[:2] == "08", // connection exception
			pgErr.Code == "40001", pgErr.Code == "40P01", // serialization failure, deadlock
			pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", // admin/crash shutdown, cannot connect now
			pgErr.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var stalled *StalledError
	return pgconn.SafeToRetry(err) || pgconn.Timeout(err) || errors.As(err, &connectErr) || errors.As(err, &stalled)
}

// IsDatabaseError reports whether err came from PostgreSQL or the
// connection to it (for the failure reason of a metric).
func IsDatabaseError(err error) bool {
	var pe *pgconn.PgError
	var ce *pgconn.ConnectError
	return errors.As(err, &pe) || errors.As(err, &ce) || errors.Is(err, ErrLockLost) || pgconn.Timeout(err)
}
