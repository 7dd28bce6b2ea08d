-- The cap on subscriptions per CustomerKey counts them at every create, and the producer
-- groups windows in flight by CustomerKey.
CREATE INDEX subscription_customer ON apievents.subscription (customer_key);
