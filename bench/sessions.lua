-- wrk script for by-hand runs: clients with sessions, as bench/loadgen.ts
-- drives them. A request carries a learnt session cookie with probability
-- 1 - NEW (env, default 0.05); an answer's Set-Cookie for COOKIE (env,
-- default PHPSESSID) adds its id to the population (at most 20,000).
--
-- Header names are matched without regard to case: HAProxy 2.6 sends them in
-- lower case, and a script that looks up "Set-Cookie" never learns a session
-- behind it, so every request it sends there has no cookie and is a new
-- session (see the README, "The whole machine's CPU per request").
local ids, count = {}, 0
local newShare = tonumber(os.getenv("NEW") or "0.05")
local cookie = os.getenv("COOKIE") or "PHPSESSID"
local prefix = cookie .. "="
local targets = {"/", "/cart", "/account"}

request = function()
  local headers = {}
  if count > 0 and math.random() >= newShare then
    headers["Cookie"] = "theme=dark; " .. prefix .. ids[math.random(count)] .. "; _ga=GA1.2.3"
  end
  return wrk.format("GET", targets[math.random(#targets)], headers)
end

response = function(status, headers, body)
  if count >= 20000 then return end
  for name, value in pairs(headers) do
    if #name == 10 and name:lower() == "set-cookie" and value:sub(1, #prefix) == prefix then
      local stop = value:find(";", #prefix + 1, true)
      local id = value:sub(#prefix + 1, stop and stop - 1 or #value)
      if id ~= "" then count = count + 1; ids[count] = id end
      return
    end
  end
end
