"""`sqlwarden replay`: reading a message log back (`read`), checking protocol rules
(`check`), the HTML page (`html`) and re-executing writes (`reexecute`)."""
