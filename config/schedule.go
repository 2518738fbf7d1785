package config

import (
	"time"

	"github.com/robfig/cron/v3"
)

// wallClock wraps a cron spec so daylight-saving changes behave as a user
// expects (robfig/cron v3 skips a daily 02:30 on the day clocks spring
// forward past it and runs it twice on the day they fall back):
//
//   - a slot whose wall-clock time does not exist (skipped by spring
//     forward) fires once, at the first instant after the gap;
//   - a wall-clock time that happens twice (fall back) fires once, at its
//     first occurrence: slots are wall-clock times, so the repeated hour
//     does not fire again (an "every 30 minutes" job pauses for it).
type wallClock struct {
	spec *cron.SpecSchedule
}

func dstSafe(s cron.Schedule) cron.Schedule {
	if spec, ok := s.(*cron.SpecSchedule); ok {
		return wallClock{spec: spec}
	}
	return s // @every: elapsed time, no wall clock involved
}

// Next returns the first slot strictly after t, in t's location.
func (w wallClock) Next(t time.Time) time.Time {
	loc := t.Location()
	floating := func(x time.Time) time.Time {
		return time.Date(x.Year(), x.Month(), x.Day(), x.Hour(), x.Minute(), x.Second(), x.Nanosecond(), time.UTC)
	}
	spec := *w.spec
	spec.Location = time.UTC
	f := floating(t)
	for i := 0; i < 1000; i++ {
		f = spec.Next(f)
		if f.IsZero() {
			return f
		}
		if real := realInstant(f, loc); real.After(t) {
			return real
		}
	}
	return time.Time{}
}

// realInstant maps a wall-clock time (in a UTC-based "floating" time) to
// the instant it names in loc: the first occurrence of an ambiguous time,
// the end of the gap for a time that does not exist.
func realInstant(f time.Time, loc *time.Location) time.Time {
	c := time.Date(f.Year(), f.Month(), f.Day(), f.Hour(), f.Minute(), f.Second(), f.Nanosecond(), loc)
	if wall := time.Date(c.Year(), c.Month(), c.Day(), c.Hour(), c.Minute(), c.Second(), c.Nanosecond(), time.UTC); !wall.Equal(f) {
		// In a gap: Go normalised it to one side. The first valid instant
		// after the gap is the start of the zone period that follows it.
		start, end := c.ZoneBounds()
		if wall.After(f) {
			return start
		}
		return end
	}
	// Ambiguous times: prefer the earlier occurrence if there is one.
	if earlier := c.Add(-time.Hour); earlier.Hour() == c.Hour() && earlier.Minute() == c.Minute() && earlier.Day() == c.Day() {
		return earlier
	}
	return c
}

// ParseSchedule parses a cron expression as job schedules are parsed: five
// fields, an optional leading seconds field, or a descriptor such as
// @daily, with the daylight-saving behaviour described on wallClock.
func ParseSchedule(spec string) (cron.Schedule, error) {
	s, err := cronParser.Parse(spec)
	if err != nil {
		return nil, err
	}
	return dstSafe(s), nil
}
