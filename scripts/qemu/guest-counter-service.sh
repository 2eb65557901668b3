#!/bin/busybox sh
# One TCP connection to the guest's counter service (busybox nc -e runs this per connection, stdin/stdout the
# socket): every request line is answered "<line> <counter>", the counter /init keeps in guest memory. Only shell
# builtins in the loop: a fork per request is slow under TCG.
last=0
while read -r req; do
  read -r c </run/counter && [ -n "$c" ] && last=$c
  echo "$req $last"
done
